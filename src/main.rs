//! The `deepdream` command line: parse, install Ctrl-C/SIGTERM, run, and map the one error
//! type to an exit code: 0 success, 1 failure, 2 a mistake in the input or the flags, 130
//! interrupted.

mod cli;

use clap::Parser;
use clap::error::ErrorKind;

/// Dream steps allocate and free large tensors constantly; glibc hands such blocks back to the
/// kernel and faults them in again (a fifth of the time in profiles). mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the option enum of the mimalloc that libmimalloc-sys 0.1.49
/// builds (v3 by default; 15 in both c_src/mimalloc/v3 and v2 include/mimalloc.h, right after
/// the eager-commit-delay entry); the crate names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

const SIGPIPE: i32 = 13;
const SIG_DFL: usize = 0;

unsafe extern "C" {
    /// libc's `signal`: the handler is passed as an address (`SIG_DFL` is 0).
    fn signal(sig: i32, handler: usize) -> usize;
}

/// One line on stderr; if stderr itself is closed or full there is nobody to tell.
fn tell(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn main() {
    // Keep freed memory instead of returning it to the kernel 10 ms later: the next dream step
    // asks for the same sizes again, and faulting fresh pages in costs several percent.
    // SAFETY: sets a process-wide allocator option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle's elementwise ops run on its own pool (the caller and one worker on two cores),
    // whose worker spins 25,000 rounds after each op before it sleeps: on two cores that spin
    // took 2.4% of an InceptionV3 dream's CPU time from rayon's workers beside it (perf: the
    // worker's samples 3.3% with the spin, 0.8% without). Sleep at once instead, unless the
    // user set the limit.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: no thread of ours runs yet, and nothing else reads the environment now.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0") };
    }
    // `deepdream models | head` ends quietly, as Unix tools do, when the reader goes away.
    // SAFETY: restores the default action of one signal before any thread starts.
    unsafe { signal(SIGPIPE, SIG_DFL) };
    // The matrix products' kernels, fitted to this CPU before any thread starts.
    // SAFETY: no thread of ours runs yet (OpenBLAS's own workers are idle).
    unsafe { deepdream::ops::gemm::prepare_before_threads() };
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // One line, like every other error: clap's message (with the argument list some
            // kinds put below it), without its usage block.
            let text = e.render().to_string();
            let first: Vec<_> =
                text.lines().map(str::trim).skip_while(|l| l.is_empty()).take_while(|l| !l.is_empty()).collect();
            tell(&format!("deepdream: {} (see --help)", deepdream::error::printable(&first.join(" "))));
            std::process::exit(2);
        }
    };
    let cancel = cli::Cancel::default();
    let handler = cancel.clone();
    // Ctrl-C and SIGTERM: a dream or render under way stops after the current step (a render
    // first finishes a playable file); a second signal, or a signal to a command that is not
    // dreaming yet (or never does), exits now.
    let _ = ctrlc::set_handler(move || {
        if !handler.armed() || handler.raised() {
            std::process::exit(130);
        }
        handler.raise();
    });
    // Run on one of rayon's worker threads rather than beside them: the serial stretches of a
    // dream step then share the cores with one idle worker instead of all of them spinning
    // (three busy threads on two cores otherwise).
    let code = match rayon::scope(|_| cli::run(args, &cancel)) {
        Ok(()) => 0,
        Err(deepdream::Error::Cancelled) => {
            tell("deepdream: interrupted");
            130
        }
        Err(e) => {
            tell(&format!("deepdream: error: {}", e.one_line()));
            e.exit_code()
        }
    };
    std::process::exit(code);
}
