//! Which version of a file is at a path, without reading it.

use std::path::Path;
use std::time::SystemTime;

/// What tells one version of a file from another: a file renamed over it
/// is another inode, one written in place has another length or
/// modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    inode: (u64, u64),
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    /// The stamp of the file at `path`; `None` when there is none.
    pub(super) fn of(path: &Path) -> Option<FileStamp> {
        std::fs::metadata(path).ok().map(|metadata| FileStamp::from(&metadata))
    }
}

impl From<&std::fs::Metadata> for FileStamp {
    fn from(metadata: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            (metadata.dev(), metadata.ino())
        };
        #[cfg(not(unix))]
        let inode = (0, 0);
        FileStamp { inode, len: metadata.len(), modified: metadata.modified().ok() }
    }
}
