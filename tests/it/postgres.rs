//! A throw-away PostgreSQL server for the cluster tests, from the Debian package's binaries
//! (`/usr/lib/postgresql/<version>/bin`): its own data directory in a temp dir, a free loopback
//! port, `trust` authentication, `fsync` off. As root (as CI runs) the server runs as the
//! `postgres` user through `runuser`, since PostgreSQL refuses to run as root; as anyone else it
//! runs as the caller. A missing server fails the test, saying how to install it: the cluster tests
//! never skip silently.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use tempfile::TempDir;

use crate::support::{free_port, is_root};

/// Where the Debian package puts the versions of the server it installs.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";

/// A PostgreSQL server of its own for one test, stopped (`-m immediate`) and removed on drop.
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    /// Holds `data/`, `server.log` and the server's Unix socket; removed on drop.
    dir: TempDir,
}

/// A certificate authority of its own for a test: its certificate (PEM) and the key it signs with.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    /// A fresh self-signed CA called `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { cert, key }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1` signed by this CA, and its key: `(cert
    /// PEM, key PEM)`.
    fn server_cert(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Postgres {
    /// Creates a fresh cluster (`initdb`) and starts it on a free loopback port; returns once the
    /// server accepts connections.
    pub fn start() -> Postgres {
        Postgres::start_prepared(|_| {})
    }

    /// [`Postgres::start`] with TLS on and required: a server certificate for `localhost` and
    /// `127.0.0.1` signed by a CA of its own (see [`Postgres::ca_file`]), and a `pg_hba.conf` that
    /// lets TCP connections in only over TLS (`hostssl`), so a connection that works is encrypted.
    pub fn start_with_tls() -> Postgres {
        Postgres::start_prepared(|dir| {
            let ca = TestCa::new("tickd test CA");
            let (cert, key) = ca.server_cert();
            let data = dir.join("data");
            // PostgreSQL refuses a key file that others may read, or that it does not own.
            for (name, text, mode) in [("server.crt", &cert, 0o644), ("server.key", &key, 0o600)] {
                let path = data.join(name);
                fs::write(&path, text).expect("write the server's certificate");
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
                hand_to_server_user(&path);
            }
            fs::write(dir.join("ca.pem"), ca.pem()).expect("write the CA");
            let mut conf = fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .expect("open postgresql.conf");
            conf.write_all(
                b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            )
            .expect("append to postgresql.conf");
            fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )
            .expect("write pg_hba.conf");
        })
    }

    /// The CA that signed the server's certificate, PEM ([`Postgres::start_with_tls`]).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `start`, calling `prepare` with the temp dir after `initdb` and before the server starts.
    fn start_prepared(prepare: impl FnOnce(&Path)) -> Postgres {
        let begun = Instant::now();
        let bin = server_bin_dir();
        let dir = tempfile::tempdir().expect("tempdir for PostgreSQL");
        hand_to_server_user(dir.path());
        let data = dir.path().join("data");
        let mut initdb = as_server_user(&bin.join("initdb"), dir.path());
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync"]);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed (as root, the postgres user needs a way into {}: see TMPDIR): {}",
            dir.path().display(),
            describe(&out)
        );
        prepare(dir.path());
        // The port is free when picked and bound by the server a moment later: on the rare loss
        // of that race, try another one.
        let mut postgres = Postgres { bin, port: 0, dir };
        for attempt in 1..=3 {
            postgres.port = free_port();
            match postgres.pg_ctl_start() {
                Ok(()) => break,
                Err(why) if attempt < 3 && why.contains("could not bind") => continue,
                Err(why) => panic!("PostgreSQL did not start: {why}"),
            }
        }
        eprintln!(
            "PostgreSQL on 127.0.0.1:{} ({}) ready in {} ms",
            postgres.port,
            postgres.bin.display(),
            begun.elapsed().as_millis()
        );
        postgres
    }

    /// The URL tickd connects to: `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server the way a crash would (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection cut); returns once it is down.
    pub fn stop_immediate(&self) {
        let out = self.pg_ctl_stop().expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}\nserver log:\n{}",
            describe(&out),
            self.server_log()
        );
    }

    /// Starts the server again on the same data and port (after [`Postgres::stop_immediate`]: with
    /// crash recovery); returns once it accepts connections.
    pub fn start_again(&self) {
        if let Err(why) = self.pg_ctl_start() {
            panic!("PostgreSQL did not start again: {why}");
        }
    }

    /// Runs `sql` with `psql -At` (unaligned, tuples only) and returns its output without the
    /// final newline; panics, with psql's error, when the statement fails.
    pub fn psql(&self, sql: &str) -> String {
        match self.try_psql(sql) {
            Ok(out) => out,
            Err(why) => panic!("psql -c {sql:?} failed: {why}"),
        }
    }

    /// [`Postgres::psql`], returning the error instead (while the server is down, say).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        // As the caller, even as root: it connects over TCP as the `postgres` role, with trust.
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-c")
            .arg(sql)
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned())
        } else {
            Err(describe(&out))
        }
    }

    /// The server's log so far (`DIR/server.log`), for failure messages.
    pub fn server_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `pg_ctl start -w` on `self.port`; the error holds pg_ctl's output and the server log.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k '{}' -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.path().display()
        );
        let out = as_server_user(&self.bin.join("pg_ctl"), self.dir.path())
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-o", &options, "start"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}\nserver log:\n{}",
                describe(&out),
                self.server_log()
            ))
        }
    }

    fn pg_ctl_stop(&self) -> std::io::Result<Output> {
        as_server_user(&self.bin.join("pg_ctl"), self.dir.path())
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .output()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Whether it runs or not (a test may have stopped it; then this only fails): the dir
        // goes right after.
        let _ = self.pg_ctl_stop();
    }
}

/// The `bin` directory of the newest server version installed under `/usr/lib/postgresql`,
/// installed first by `scripts/install-postgres.sh` when there is none and we are root (so a
/// plain `cargo test` on a fresh machine needs nothing beforehand); panics, saying how to install
/// one, when there is still none.
fn server_bin_dir() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if installed_bin_dir().is_none() && nix::unistd::Uid::effective().is_root() {
        INSTALLED.get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-postgres.sh");
            match Command::new("bash").arg(&script).status() {
                Ok(status) if status.success() => {}
                other => eprintln!("{} failed: {other:?}", script.display()),
            }
        });
    }
    match installed_bin_dir() {
        Some(bin) => bin,
        None if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true but no PostgreSQL server under {INSTALL_ROOT}/<version>/bin: the cluster \
             tests need one; scripts/install-postgres.sh installs the Debian postgresql package \
             (as root)"
        ),
        None => panic!(
            "no PostgreSQL server under {INSTALL_ROOT}/<version>/bin, which the cluster tests \
             need: install postgresql (apt-get install postgresql, or as root \
             scripts/install-postgres.sh)"
        ),
    }
}

/// The newest installed server's `bin` directory, if any.
fn installed_bin_dir() -> Option<PathBuf> {
    let newest = fs::read_dir(INSTALL_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.to_owned();
            let key: Vec<u32> = version
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((key, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0));
    newest.map(|(_, bin)| bin)
}

/// As root, makes the `postgres` user (whom the server runs as) the owner of `path`.
fn hand_to_server_user(path: &Path) {
    if !is_root() {
        return;
    }
    let user = nix::unistd::User::from_name("postgres")
        .expect("look up the postgres user")
        .expect(
            "running as root, the PostgreSQL fixture needs the `postgres` user (created by the \
             Debian postgresql package) to run the server as",
        );
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
        .unwrap_or_else(|e| panic!("hand {} to the postgres user: {e}", path.display()));
}

/// A command for the server binary `program`, as the `postgres` user when we are root, in `dir`
/// (which that user owns: it may not be allowed into the test's own directory).
fn as_server_user(program: &Path, dir: &Path) -> Command {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command.current_dir(dir);
    command
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

#[test]
fn postgres_fixture_starts_and_answers() {
    let pg = Postgres::start();
    assert_eq!(pg.psql("select 1"), "1", "{}", pg.server_log());
    let stopped = Instant::now();
    pg.stop_immediate();
    assert!(pg.try_psql("select 1").is_err(), "answers while stopped");
    let restarted = Instant::now();
    pg.start_again();
    let back = Instant::now();
    assert_eq!(pg.psql("select 1"), "1", "{}", pg.server_log());
    eprintln!(
        "stop -m immediate {} ms, start again (crash recovery) {} ms",
        (restarted - stopped).as_millis(),
        (back - restarted).as_millis()
    );
    // A database the way tickd sees it: the URL's user and database, on the URL's port.
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert_eq!(pg.psql("select current_user"), "postgres");
}
