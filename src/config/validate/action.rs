//! A job's action: exactly one of `command`, `shell`, `http` and `handler`; the keys only child
//! processes take; and what `execve` would refuse (every run would fail with E2BIG).

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::Spanned;

use super::{At, Validator};
use crate::config::env::EnvPolicy;
use crate::config::raw::RawJob;
use crate::config::spec::{Action, ProcessSpec};
use crate::config::values::exec_size_problem;

impl Validator<'_> {
    /// The job's action; `offset` is where the job's table starts, and child processes inherit
    /// by `inherit`.
    pub(super) fn action(
        &mut self,
        job: &str,
        offset: usize,
        raw: &RawJob,
        inherit: &EnvPolicy,
    ) -> Option<Action> {
        self.one_action(job, offset, raw);
        if !raw.is_process() {
            for (key, offset) in raw.process_only_keys() {
                self.report(
                    offset,
                    Some(job),
                    Some(key),
                    format!("\"{key}\" applies to \"command\" and \"shell\" jobs only"),
                );
            }
        }
        if let Some(env) = &raw.env {
            if let Some(why) = exec_size_problem(&[], env.get_ref()) {
                self.reject(env, At::job(job, "env"), why);
            }
        }
        let process = |argv| {
            Action::Process(Box::new(ProcessSpec {
                argv,
                cwd: raw.cwd.as_ref().map(|v| PathBuf::from(v.get_ref())),
                env: raw
                    .env
                    .as_ref()
                    .map(|v| v.get_ref().clone())
                    .unwrap_or_default(),
                inherit: inherit.clone(),
            }))
        };
        if let Some(command) = &raw.command {
            self.program(command, At::job(job, "command"), "command")
                .map(process)
        } else if let Some(shell) = &raw.shell {
            self.shell(job, shell).map(process)
        } else if let Some(http) = &raw.http {
            Some(Action::Http(Box::new(self.http(job, http.get_ref()))))
        } else if let Some(handler) = &raw.handler {
            self.handler(job, handler).map(Action::Handler)
        } else {
            None
        }
    }

    /// Reports a job with no action, or with more than one.
    fn one_action(&mut self, job: &str, offset: usize, raw: &RawJob) {
        let found = raw.action_keys();
        match found.as_slice() {
            [] => self.report(
                offset,
                Some(job),
                None,
                "a job needs an action: \"command\", \"shell\", \"http\" or \"handler\"".to_owned(),
            ),
            [_] => {}
            [_, (key, second), ..] => {
                let keys: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
                self.report(
                    *second,
                    Some(job),
                    Some(*key),
                    format!("a job has exactly one action, found {}", keys.join(" and ")),
                );
            }
        }
    }

    /// A program and its arguments (`command`, `on_failure`): `what` names it in messages.
    pub(super) fn program(
        &mut self,
        value: &Spanned<Vec<String>>,
        at: At<'_>,
        what: &str,
    ) -> Option<Vec<String>> {
        if value.get_ref().first().is_none_or(|p| p.is_empty()) {
            self.reject(
                value,
                at,
                format!("the {what} needs at least a program name"),
            );
            return None;
        }
        self.execable(value, at, value.get_ref().clone())
    }

    /// A `shell` script, as the argv that runs it.
    fn shell(&mut self, job: &str, shell: &Spanned<String>) -> Option<Vec<String>> {
        let at = At::job(job, "shell");
        if shell.get_ref().trim().is_empty() {
            self.reject(shell, at, "the shell script is empty".to_owned());
            return None;
        }
        let argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            shell.get_ref().clone(),
        ];
        self.execable(shell, at, argv)
    }

    /// `argv`, if `execve` would take it (on top of the inherited environment).
    fn execable<T>(
        &mut self,
        value: &Spanned<T>,
        at: At<'_>,
        argv: Vec<String>,
    ) -> Option<Vec<String>> {
        match exec_size_problem(&argv, &BTreeMap::new()) {
            Some(why) => {
                self.reject(value, at, why);
                None
            }
            None => Some(argv),
        }
    }

    /// A registered in-process handler.
    fn handler(&mut self, job: &str, handler: &Spanned<String>) -> Option<String> {
        let name = handler.get_ref();
        if self.handlers.contains(name) {
            return Some(name.clone());
        }
        let known = self.handlers.names().collect::<Vec<_>>().join(", ");
        self.reject(
            handler,
            At::job(job, "handler"),
            format!("unknown handler \"{name}\" (registered: {known})"),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{check, error};
    use crate::config::values::MAX_EXEC_STRING;

    #[test]
    fn process_only_keys_are_rejected_on_other_actions() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\ncwd = \"/tmp\"\n");
        assert!(
            msg.contains("key \"cwd\": \"cwd\" applies to \"command\""),
            "{msg}"
        );
    }

    #[test]
    fn unknown_handler_lists_the_registered_ones() {
        let msg = error("[jobs.a]\nevery = \"1s\"\nhandler = \"nope\"\n");
        assert!(
            msg.starts_with("jobs.toml:3:11: job \"a\", key \"handler\""),
            "{msg}"
        );
        assert!(
            msg.contains("unknown handler \"nope\" (registered: log)"),
            "{msg}"
        );
    }

    /// A 10 MB argument passed `check` and failed every run with E2BIG.
    #[test]
    fn arguments_or_variables_too_large_for_execve_are_refused() {
        let big = "x".repeat(10 * 1024 * 1024);
        let just_too_long = "x".repeat(MAX_EXEC_STRING);
        let longest = "x".repeat(MAX_EXEC_STRING - 1);
        for (key, job) in [
            ("command", format!("command = [\"echo\", \"{big}\"]")),
            (
                "command",
                format!("command = [\"echo\", \"{just_too_long}\"]"),
            ),
            ("shell", format!("shell = \"echo {big}\"")),
            (
                "env",
                format!("command = [\"env\"]\nenv = {{ BIG = \"{big}\" }}"),
            ),
            (
                "on_failure",
                format!("handler = \"log\"\non_failure = [\"echo\", \"{big}\"]"),
            ),
        ] {
            let msg = error(&format!("[jobs.a]\nevery = \"1s\"\n{job}\n"));
            assert!(
                msg.contains(&format!("key \"{key}\"")),
                "{key}: {}",
                &msg[..200.min(msg.len())]
            );
            assert!(
                msg.contains("E2BIG") || msg.contains("ARG_MAX"),
                "{key}: {}",
                &msg[..200.min(msg.len())]
            );
        }
        // Many arguments that fit one by one but not together.
        let many: Vec<String> = (0..40).map(|_| format!("\"{longest}\"")).collect();
        let msg = error(&format!(
            "[jobs.a]\nevery = \"1s\"\ncommand = [\"echo\", {}]\n",
            many.join(", ")
        ));
        assert!(msg.contains("ARG_MAX"), "{}", &msg[..200.min(msg.len())]);
        // The longest single argument the kernel takes is fine.
        assert!(check(&format!(
            "[jobs.a]\nevery = \"1s\"\ncommand = [\"echo\", \"{longest}\"]\n"
        ))
        .is_ok());
    }
}
