//! Standard output of client commands: when its reader goes away (`tend … | head`) the command
//! ends quietly, as a Unix tool ended by SIGPIPE would. SIGPIPE itself stays ignored: a control
//! plane that hangs up on the CLI's socket mid-write is an error to report (or a restart to
//! follow through), never a signal that kills the command without a word.

use std::io::Write;

/// Writes to standard output and flushes; see [`check`] for what a failed write does.
pub fn print(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    check(out.write_fmt(args).and_then(|()| out.flush()));
}

/// Ends the process when a write to standard output failed: quietly with 0 when the reader has
/// gone (a broken pipe), with 1 and a message otherwise (a full disk under a redirection).
pub fn check(written: std::io::Result<()>) {
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1)
        }
    }
}

/// `println!` for client commands' output (see the module).
macro_rules! outln {
    () => {
        $crate::out::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for client commands' output (see the module).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::print(format_args!($($arg)*))
    };
}
