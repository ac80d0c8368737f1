//! The WASI a plugin is linked against: wasmtime-wasi's p2 implementation
//! with the calls that could escape the sandbox replaced.
//!
//! - Waiting (`wasi:io/poll`'s `poll` and `pollable.block`) is bounded by
//!   what is left of the call's deadline. The epoch interrupts guest code
//!   only, so a guest sleeping in a host function would otherwise hold its
//!   thread (the transform thread, an aggregation worker) for as long as it
//!   asked; now it gets a deadline error when its deadline passes.
//! - Sockets and name lookups trap: a plugin reaches no network, and the
//!   error names what it tried (the context denies them too, so a call that
//!   got past these would still fail).
//!
//! Everything else — clocks, random, stdout/stderr (captured), environment
//! (empty), a read-only `/data` when configured — is wasmtime-wasi's own.

use std::future::Future;
use std::pin::Pin;

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::runtime::in_tokio;

use super::limits::Tripped;
use super::HostState;

/// The WASI version wasmtime-wasi 48 defines; components built against any
/// earlier 0.2.x resolve to it. A wasmtime upgrade that moves it makes the
/// shadowing below define a second, unused instance: `tests/sandbox.rs`
/// (a plugin that sleeps, one that opens a socket) catches that.
const WASI: &str = "0.2.12";

/// Links WASI into `linker` with the waiting calls bounded and the network
/// denied.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut poll = linker.instance(&format!("wasi:io/poll@{WASI}"))?;
    poll.func_wrap("poll", |mut store: StoreContextMut<'_, HostState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
        wait(store.data_mut(), "wasi:io/poll.poll", |table| Box::pin(table.poll(pollables))).map(|ready| (ready,))
    })?;
    poll.func_wrap("[method]pollable.block", |mut store: StoreContextMut<'_, HostState>, (pollable,): (Resource<DynPollable>,)| {
        wait(store.data_mut(), "wasi:io/poll.pollable.block", |table| Box::pin(table.block(pollable)))
    })?;
    for (interface, func, call) in [
        ("tcp-create-socket", "create-tcp-socket", "wasi:sockets/tcp-create-socket"),
        ("udp-create-socket", "create-udp-socket", "wasi:sockets/udp-create-socket"),
        ("ip-name-lookup", "resolve-addresses", "wasi:sockets/ip-name-lookup"),
    ] {
        linker
            .instance(&format!("wasi:sockets/{interface}@{WASI}"))?
            .func_new(func, move |mut store, _ty, _params, _results| Err(store.data_mut().clock.trip(Tripped::Denied(call))))?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// A wait of wasmtime-wasi's, on the store's resource table.
type Wait<'t, R> = Pin<Box<dyn Future<Output = wasmtime::Result<R>> + 't>>;

/// Runs wasmtime-wasi's own wait for at most what is left of the call's
/// deadline; a wait that would go on past it traps as a deadline error.
fn wait<R>(
    state: &mut HostState,
    call: &'static str,
    start: impl for<'t> FnOnce(&'t mut ResourceTable) -> Wait<'t, R>,
) -> wasmtime::Result<R> {
    let left = state.clock.left();
    let wait = start(&mut state.table);
    // The timer is made inside the runtime `in_tokio` enters.
    match in_tokio(async { tokio::time::timeout(left, wait).await }) {
        Ok(result) => result,
        Err(_) => Err(state.clock.trip(Tripped::Waited(call))),
    }
}
