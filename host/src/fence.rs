//! Panics fenced where the host calls code it cannot trust to be total: a
//! dependency's decoder reading a damaged file (maxminddb indexes its
//! buffer without bounds checks), code a host import runs on a plugin's
//! behalf. Such a panic must not unwind through a plugin call into the
//! transform thread; the caller turns it into an ordinary answer ("no
//! location") and counts it.
//!
//! The process's panic hook would print every fenced panic with a
//! backtrace note, once per lookup of a damaged record: thousands of lines a
//! second. Inside a fence the hook stays quiet; callers log at their own,
//! bounded rate.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static FENCED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work`, returning what its panic said instead of unwinding.
pub fn fenced<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    quiet_inside_fences();
    let was = FENCED.with(|f| f.replace(true));
    let result = catch_unwind(AssertUnwindSafe(work));
    FENCED.with(|f| f.set(was));
    result.map_err(|payload| crate::runtime::supervise::panic_message(payload.as_ref()))
}

/// Installs (once) a panic hook that defers to the previous one outside
/// fences.
fn quiet_inside_fences() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !FENCED.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_a_fence_is_returned_with_its_message_and_the_fence_nests() {
        assert_eq!(fenced(|| 7), Ok(7));
        let outer = fenced(|| {
            let inner = fenced(|| -> u8 { panic!("damaged record at {}", 12) });
            assert_eq!(inner, Err("damaged record at 12".to_string()));
            FENCED.with(Cell::get)
        });
        assert_eq!(outer, Ok(true), "still fenced after the inner fence");
        assert!(!FENCED.with(Cell::get), "unfenced after the outer one");
    }
}
