//! What a run starts with: its environment, program, working directory, standard streams and
//! hardening, prepared as an [`ExecPlan`] before the spawn.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::config::{OutputMode, ProcessSpec, RunAs, NEVER_INHERITED};
use crate::os::{ExecPlan, Hardening};

/// The descriptor limit (`RLIMIT_NOFILE`: soft, hard) every child starts with, when the daemon
/// changed its own; see [`set_child_descriptor_limit`]. Process-wide, as the limit itself is.
static CHILD_DESCRIPTOR_LIMIT: OnceLock<(u64, u64)> = OnceLock::new();

/// Starts every child from now on with the descriptor limit `soft`, `hard`, not the daemon's.
///
/// For a daemon that raised its own soft limit (the binary raises it to the hard limit at start,
/// so that HTTP clients and runs cannot exhaust it): its children get back the soft limit it was
/// started with, as systemd and nginx do, since a program using `select()` breaks on descriptors
/// numbered 1024 and above; a child that wants more can raise its own up to `hard`. The first call
/// wins; without one, children inherit the daemon's limit.
pub fn set_child_descriptor_limit(soft: u64, hard: u64) {
    let _ = CHILD_DESCRIPTOR_LIMIT.set((soft, hard));
}

/// The read end of a pipe the child writes its output to; `None` when its output is not logged.
pub(super) type OutputPipe = Option<OwnedFd>;

/// Everything needed to start `spec`: the plan, and the read ends of its stdout and stderr pipes
/// when its `output` is logged.
pub(super) fn plan(
    spec: &ProcessSpec,
    output: OutputMode,
    run_as: Option<&RunAs>,
    run_vars: &[(&'static str, String)],
) -> io::Result<(ExecPlan, OutputPipe, OutputPipe)> {
    let env = job_environment(spec, run_as, run_vars);
    let cwd = match spec.cwd() {
        Some(cwd) => cwd.to_owned(),
        None => std::env::current_dir()?,
    };
    let program = resolve_program(&spec.argv()[0], env.get(OsStr::new("PATH")), &cwd)?;
    let (stdout, stderr, stdio) = standard_streams(output)?;
    let plan = ExecPlan::new(
        &program,
        spec.argv(),
        env,
        spec.cwd(),
        stdio,
        hardening(run_as),
    )?;
    Ok((plan, stdout, stderr))
}

/// The environment `spec` runs with: the daemon's, as the job's policy lets it through, plus the
/// job's own variables, plus the user's `HOME`, `USER` and `LOGNAME` for `run_as`.
fn job_environment(
    spec: &ProcessSpec,
    run_as: Option<&RunAs>,
    run_vars: &[(&'static str, String)],
) -> BTreeMap<OsString, OsString> {
    let policy = spec.inherit();
    let mut env: BTreeMap<OsString, OsString> = if policy.clear() {
        policy
            .keep()
            .iter()
            .filter_map(|name| Some((name.into(), std::env::var_os(name)?)))
            .collect()
    } else {
        std::env::vars_os().collect()
    };
    env.retain(|name, _| inherits(spec, name));
    env.extend(spec.env().iter().map(|(k, v)| (k.into(), v.into())));
    if let Some(run_as) = run_as {
        env.insert("HOME".into(), run_as.home().into());
        env.insert("USER".into(), run_as.user().into());
        env.insert("LOGNAME".into(), run_as.user().into());
    }
    env.extend(run_vars.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

/// Whether the job's policy lets the daemon's variable `name` through to its runs (the job's
/// own variables aside): kept, when the policy clears the rest, and not removed.
fn inherits(spec: &ProcessSpec, name: &OsStr) -> bool {
    let policy = spec.inherit();
    let named = |names: &[String]| names.iter().any(|n| name == n.as_str());
    (!policy.clear() || named(policy.keep()))
        && !named(policy.remove())
        && !NEVER_INHERITED.iter().any(|n| name == *n)
}

/// The `PATH` a run of `spec` has, as [`job_environment`] would give it, without building the
/// rest of the environment (`tickd check` asks this of every job: copying the daemon's whole
/// environment for each took most of a check of 100,000 jobs).
fn job_path(spec: &ProcessSpec) -> Option<OsString> {
    if let Some(path) = spec.env().get("PATH") {
        return Some(path.into());
    }
    let name = OsStr::new("PATH");
    inherits(spec, name)
        .then(|| std::env::var_os(name))
        .flatten()
}

/// Finds the programs jobs would start, for `tickd check`, which warns of a program or a `cwd`
/// that is not there. It remembers what it found for the duration of one check: a file's jobs
/// mostly start a few programs from one `PATH`, and searching it again for each of 100,000 jobs
/// took seconds.
#[derive(Default)]
pub(crate) struct ProgramFinder {
    found: HashMap<ProgramKey, Result<PathBuf, (io::ErrorKind, String)>>,
}

/// What decides where a program is found: its name, the job's `PATH` and the job's `cwd` (`None`:
/// the daemon's).
type ProgramKey = (String, Option<OsString>, Option<PathBuf>);

impl ProgramFinder {
    /// The program a run of `spec` would start, found as the run would find it (the job's
    /// `PATH`, relative to its `cwd`).
    pub(crate) fn find(&mut self, spec: &ProcessSpec) -> io::Result<PathBuf> {
        let key = (
            spec.argv()[0].clone(),
            job_path(spec),
            spec.cwd().map(Path::to_owned),
        );
        if let Some(found) = self.found.get(&key) {
            return found
                .clone()
                .map_err(|(kind, why)| io::Error::new(kind, why));
        }
        let found = match &key.2 {
            Some(cwd) => find_program(&key.0, key.1.as_ref(), cwd),
            None => {
                std::env::current_dir().and_then(|cwd| find_program(&key.0, key.1.as_ref(), &cwd))
            }
        };
        let kept = match &found {
            Ok(program) => Ok(program.clone()),
            Err(err) => Err((err.kind(), err.to_string())),
        };
        self.found.insert(key, kept);
        found
    }

    /// How many different lookups were made.
    #[cfg(test)]
    fn lookups(&self) -> usize {
        self.found.len()
    }
}

/// The program `argv0` names in `path`, relative to `cwd`, checked to be there.
fn find_program(argv0: &str, path: Option<&OsString>, cwd: &Path) -> io::Result<PathBuf> {
    let program = resolve_program(argv0, path, cwd)?;
    // A name with a `/` is used as it is: it must be there, relative to the job's `cwd`.
    let there = if program.is_absolute() {
        program.clone()
    } else {
        cwd.join(&program)
    };
    std::fs::metadata(&there)?;
    Ok(program)
}

/// The program `argv0` names, found as `execvp` would: a name with a `/` is used as it is, a bare
/// name is searched in `path` (the job's `PATH`), relative to `cwd`.
fn resolve_program(argv0: &str, path: Option<&OsString>, cwd: &Path) -> io::Result<PathBuf> {
    if argv0.contains('/') {
        return Ok(PathBuf::from(argv0));
    }
    let default_path = OsString::from("/usr/local/bin:/usr/bin:/bin");
    which::which_in(argv0, Some(path.unwrap_or(&default_path)), cwd).map_err(|err| match err {
        which::Error::CannotFindBinaryPath => io::Error::from_raw_os_error(libc::ENOENT),
        other => io::Error::other(other.to_string()),
    })
}

/// The child's stdin, stdout and stderr for `output` (stdin is always `/dev/null`; `None` keeps
/// the daemon's), and the read ends of the stdout and stderr pipes when output is logged.
fn standard_streams(
    output: OutputMode,
) -> io::Result<(OutputPipe, OutputPipe, [Option<OwnedFd>; 3])> {
    let null = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    Ok(match output {
        OutputMode::Log => {
            let (out_read, out_write) = pipe()?;
            let (err_read, err_write) = pipe()?;
            (
                Some(out_read),
                Some(err_read),
                [Some(null()?), Some(out_write), Some(err_write)],
            )
        }
        OutputMode::Inherit => (None, None, [Some(null()?), None, None]),
        OutputMode::Discard => (None, None, [Some(null()?), Some(null()?), Some(null()?)]),
    })
}

/// What the child does to itself before it runs the job: see [`Hardening`].
fn hardening(run_as: Option<&RunAs>) -> Hardening {
    Hardening {
        daemon_pid: std::process::id(),
        credentials: run_as.map(|r| (r.groups().to_vec(), r.gid(), r.uid())),
        descriptor_limit: CHILD_DESCRIPTOR_LIMIT.get().copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Action;

    /// The process specs of the jobs of `text`, by name.
    fn processes(text: &str) -> BTreeMap<String, ProcessSpec> {
        let config = crate::config::parse(
            Path::new("jobs.toml"),
            text,
            &crate::Handlers::with_builtins(),
        )
        .expect("valid");
        config
            .jobs()
            .iter()
            .map(|(name, spec)| match spec.action() {
                Action::Process(process) => (name.clone(), (**process).clone()),
                _ => panic!("job {name} is not a process"),
            })
            .collect()
    }

    #[test]
    fn the_path_looked_up_is_the_path_the_run_gets() {
        let jobs = |daemon: &str| {
            processes(&format!(
                "[daemon]\n{daemon}\n[jobs.a]\nevery = \"1s\"\ncommand = [\"true\"]\n\
                 [jobs.own]\nevery = \"1s\"\ncommand = [\"true\"]\nenv = {{ PATH = \"/opt/x\" }}\n"
            ))
        };
        for daemon in [
            "",
            "env_clear = true",
            "env_clear = true\nenv_keep = [\"PATH\"]",
            "env_remove = [\"PATH\"]",
        ] {
            for (name, spec) in jobs(daemon) {
                let full = job_environment(&spec, None, &[]).remove(OsStr::new("PATH"));
                assert_eq!(job_path(&spec), full, "job {name} with {daemon:?}");
            }
        }
        let removed = jobs("env_remove = [\"PATH\"]");
        assert_eq!(job_path(&removed["a"]), None);
        assert_eq!(job_path(&removed["own"]), Some("/opt/x".into()));
    }

    #[test]
    fn the_same_program_in_the_same_path_is_searched_once() {
        let jobs = processes(
            "[jobs.a]\nevery = \"1s\"\ncommand = [\"true\"]\n\
             [jobs.b]\nevery = \"1s\"\ncommand = [\"true\", \"b\"]\n\
             [jobs.c]\nevery = \"1s\"\ncommand = [\"true\"]\nenv = { PATH = \"/nonexistent\" }\n",
        );
        let mut finder = ProgramFinder::default();
        let a = finder.find(&jobs["a"]).expect("true is installed");
        assert_eq!(finder.find(&jobs["b"]).expect("the same"), a);
        assert_eq!(finder.lookups(), 1);
        for _ in 0..2 {
            let err = finder.find(&jobs["c"]).expect_err("not in /nonexistent");
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        }
        assert_eq!(finder.lookups(), 2);
    }
}
