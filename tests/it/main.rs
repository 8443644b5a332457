//! Integration tests, one binary. Modules that need `../shared` skip with a printed reason
//! when it is absent; the rest build their inputs themselves.

mod backward;
mod cli;
mod dream;
#[cfg(feature = "video")]
mod farm;
mod fetch;
mod first;
mod hostile;
mod install;
mod objectives;
mod reference;
mod timeline;
mod transfers;
mod util;
#[cfg(feature = "video")]
mod video;
