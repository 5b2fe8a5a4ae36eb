//! The `[cluster]` table.

use std::time::Duration;

use toml::Spanned;

use super::{At, Validator};
use crate::cluster::tls::Target;
use crate::config::raw::RawCluster;
use crate::config::spec::ClusterSettings;
use crate::config::values::DurationRange;

/// The default confirmed window: a node cut off from the database stops firing within it.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// The default renewal interval.
pub const DEFAULT_RENEW: Duration = Duration::from_millis(200);
/// The default time without renewals after which a follower takes over.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(1);
/// The default for how late a slot may still run as a catch-up after a takeover.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(10);
/// The default number of shards: enough to spread the jobs evenly over a few dozen nodes (at
/// 30 nodes with 1,024 shards the simulation finds max/min 1.03; with 64, two or three shards
/// each), few enough that a renewal's arrays stay small.
pub const DEFAULT_SHARDS: u32 = 64;
/// The most shards a cluster may have.
pub const MAX_SHARDS: u32 = 4096;
/// The largest weight of a node.
pub const MAX_WEIGHT: u32 = 1000;

impl Validator<'_> {
    /// The cluster settings; `None` (with the problems reported) if they are not usable.
    pub(super) fn cluster(&mut self, raw: &Spanned<RawCluster>) -> Option<ClusterSettings> {
        let problems_before = self.problems.len();
        let at = At::daemon;
        let cluster = raw.get_ref();
        let url = &cluster.postgres;
        // Parsed as the connection will be, the root certificate file read too, so that a
        // typo'd mode or an unreadable CA stops the load instead of every connection. The
        // messages never repeat the URL: it may hold a password.
        if let Err(err) = Target::parse(url.get_ref()).and_then(|target| target.connector()) {
            self.reject(url, at("cluster.postgres"), err.to_string());
        }
        let node = match &cluster.node {
            Some(node) => self.plain_name(node, at("cluster.node")),
            None => host_name(),
        };
        let name = match &cluster.name {
            Some(name) => self.plain_name(name, at("cluster.name")),
            None => "default".to_owned(),
        };
        let mut duration = |value: &Option<Spanned<String>>, key, default| {
            value
                .as_ref()
                .and_then(|v| self.duration(v, at(key), DurationRange::PERIOD))
                .unwrap_or(default)
        };
        let window = duration(&cluster.window, "cluster.window", DEFAULT_WINDOW);
        let renew = duration(&cluster.renew, "cluster.renew", DEFAULT_RENEW);
        let dead_after = duration(
            &cluster.dead_after,
            "cluster.dead_after",
            DEFAULT_DEAD_AFTER,
        );
        let catch_up = duration(&cluster.catch_up, "cluster.catch_up", DEFAULT_CATCH_UP);
        // A window the owner cannot renew before it ends leaves gaps; a follower that takes over
        // while the owner's window is still open starts after it, so `dead_after` below the
        // window only delays the takeover: refuse what cannot be meant.
        if renew >= window {
            self.report(
                raw.span().start,
                None,
                Some("cluster.renew"),
                format!(
                    "renew ({}) must be shorter than window ({}): the owner would let its window run out between renewals",
                    humantime::format_duration(renew),
                    humantime::format_duration(window)
                ),
            );
        }
        if dead_after < window {
            self.report(
                raw.span().start,
                None,
                Some("cluster.dead_after"),
                format!(
                    "dead_after ({}) must be at least window ({}): a follower may only take over once the owner's window has ended",
                    humantime::format_duration(dead_after),
                    humantime::format_duration(window)
                ),
            );
        }
        let shards = self.bounded_count(
            cluster.shards.as_ref(),
            at("cluster.shards"),
            MAX_SHARDS,
            DEFAULT_SHARDS,
        );
        let weight =
            self.bounded_count(cluster.weight.as_ref(), at("cluster.weight"), MAX_WEIGHT, 1);
        (self.problems.len() == problems_before).then(|| ClusterSettings {
            postgres: url.get_ref().clone(),
            node,
            name,
            window,
            renew,
            dead_after,
            catch_up,
            shards,
            weight,
        })
    }

    /// A whole number from 1 to `max`, or `default` when absent.
    fn bounded_count(
        &mut self,
        value: Option<&Spanned<i64>>,
        at: At<'_>,
        max: u32,
        default: u32,
    ) -> u32 {
        let Some(value) = value else {
            return default;
        };
        match self.count::<u32>(value, at) {
            Some(n) if n <= max => n,
            Some(_) => {
                self.reject(value, at, format!("use a whole number from 1 to {max}"));
                default
            }
            None => default,
        }
    }

    /// A node or cluster name: shown in logs and stored in the database, so plain.
    fn plain_name(&mut self, value: &Spanned<String>, at: At<'_>) -> String {
        let name = value.get_ref();
        let plain = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            self.reject(
                value,
                at,
                "use 1 to 64 letters, digits, '-', '_' and '.'".to_owned(),
            );
        }
        name.clone()
    }
}

/// The machine's host name: a node's default name.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{check, error};

    const JOB: &str = "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\n";

    #[test]
    fn a_cluster_table_validates_with_defaults() {
        let config = check(&format!(
            "[cluster]\npostgres = \"postgres://tickd@db/app\"\nnode = \"web-1\"\n{JOB}"
        ))
        .expect("valid");
        let cluster = config.cluster().expect("a cluster");
        assert_eq!(
            (cluster.node(), cluster.name(), cluster.window()),
            ("web-1", "default", super::DEFAULT_WINDOW)
        );
        assert!(check(JOB).expect("valid").cluster().is_none());
    }

    #[test]
    fn cluster_problems_are_located_and_never_show_the_password() {
        let msg = error(&format!(
            "[cluster]\npostgres = \"mysql://u:s3cret@db/app\"\nnode = \"web 1\"\n{JOB}"
        ));
        assert!(msg.contains("key \"cluster.postgres\""), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(msg.contains("key \"cluster.node\""), "{msg}");
        let msg = error(&format!(
            "[cluster]\npostgres = \"postgres://db/app\"\nrenew = \"2s\"\n{JOB}"
        ));
        assert!(
            msg.contains("renew (2s) must be shorter than window (1s)"),
            "{msg}"
        );
        let msg = error(
            "[cluster]\npostgres = \"postgres://db/app\"\n[jobs.a]\nevery = \"1s\"\nmode = \"fixed-delay\"\nhandler = \"log\"\n",
        );
        assert!(
            msg.contains("key \"mode\": a fixed-delay job has no slots"),
            "{msg}"
        );
        assert!(check("[cluster]\npostgres = \"postgres://db/app\"\n[jobs.a]\nevery = \"1s\"\nmode = \"fixed-delay\"\nscope = \"node\"\nhandler = \"log\"\n").is_ok());
        // `on_node_loss = "rerun"` needs a cluster job whose slots keep a mark.
        let cluster = "[cluster]\npostgres = \"postgres://db/app\"\n";
        assert!(check(&format!(
            "{cluster}[jobs.a]\nevery = \"1s\"\non_node_loss = \"rerun\"\nhandler = \"log\"\n"
        ))
        .is_ok());
        for (body, why) in [
            (format!("{cluster}[jobs.a]\nevery = \"200ms\"\non_node_loss = \"rerun\"\nhandler = \"log\"\n"), "fires at most once a second"),
            (format!("{cluster}[jobs.a]\nevery = \"1s\"\nscope = \"node\"\non_node_loss = \"rerun\"\nhandler = \"log\"\n"), "not to scope = \"node\""),
            ("[jobs.a]\nevery = \"1s\"\non_node_loss = \"rerun\"\nhandler = \"log\"\n".to_owned(), "it needs [cluster]"),
            (format!("{cluster}[jobs.a]\nevery = \"1s\"\non_node_loss = \"again\"\nhandler = \"log\"\n"), "on_node_loss"),
        ] {
            let msg = check(&body).expect_err("refused").to_string();
            assert!(msg.contains("key \"on_node_loss\"") && msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn the_url_is_parsed_as_the_connection_will_be_tls_parameters_included() {
        for url in [
            "postgres://tickd@db/app?sslmode=verify-full",
            "postgres://tickd@db/app?sslmode=verify-ca&application_name=x",
            "host=db user=tickd sslmode=require",
            "postgres://tickd@db/app?sslrootcert=system",
        ] {
            let config = check(&format!("[cluster]\npostgres = \"{url}\"\n{JOB}"));
            assert!(config.is_ok(), "{url}: {:?}", config.err());
        }
        let msg = error(&format!(
            "[cluster]\npostgres = \"postgres://u:s3cret@db/app?sslmode=bogus\"\n{JOB}"
        ));
        assert!(msg.starts_with("jobs.toml:2:"), "{msg}");
        assert!(msg.contains("key \"cluster.postgres\""), "{msg}");
        assert!(
            msg.contains(
                "unknown sslmode \"bogus\": use disable, prefer, require, verify-ca or verify-full"
            ),
            "{msg}"
        );
        assert!(!msg.contains("s3cret"), "{msg}");
        let msg = error(&format!(
            "[cluster]\npostgres = \"postgres://u:s3cret@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"\n{JOB}"
        ));
        assert!(msg.contains("key \"cluster.postgres\""), "{msg}");
        assert!(
            msg.contains("cannot read sslrootcert /nonexistent/ca.pem: "),
            "{msg}"
        );
        assert!(!msg.contains("s3cret"), "{msg}");
    }
}
