//! The commands that print what packagers and editors need, generated from the definitions they
//! describe so they cannot drift: the man page (`man`, from the clap definitions), shell
//! completions (`completions`, likewise) and the jobs file's JSON Schema (`schema`, from the
//! config's serde types).

use std::io::{self, Write};
use std::path::Path;

use clap_complete::Shell;

use super::{eprintln_safe, exit};

/// Prints the man page of `tickd` itself, or with `out_dir` writes one page per command there
/// (`tickd.1`, `tickd-run.1`, ...), as a package installs them.
pub(crate) fn man(command: clap::Command, out_dir: Option<&Path>) -> u8 {
    let result = match out_dir {
        Some(dir) => clap_mangen::generate_to(command, dir),
        None => {
            let mut out = io::stdout().lock();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .and_then(|()| out.flush())
        }
    };
    finish("man page", result)
}

/// Prints the completion script for `shell`.
pub(crate) fn completions(mut command: clap::Command, shell: Shell) -> u8 {
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    finish("completions", write_stdout(&script))
}

/// Prints the JSON Schema of a jobs file.
pub(crate) fn schema() -> u8 {
    let schema = tickd::config::json_schema();
    // A `Value` always serializes; the fallback only keeps `unwrap` out.
    let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    finish("schema", write_stdout(format!("{text}\n").as_bytes()))
}

fn write_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush())
}

/// The exit code of a command that wrote `what`: a closed pipe (`tickd man | head`) is not an
/// error.
fn finish(what: &str, result: io::Result<()>) -> u8 {
    match result {
        Ok(()) => exit::OK,
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => exit::OK,
        Err(err) => {
            eprintln_safe(&format!("tickd: cannot write the {what}: {err}"));
            exit::FATAL
        }
    }
}
