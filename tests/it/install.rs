//! What installing and integrating tickd relies on: the man page and shell completions
//! (`tickd man`, `tickd completions`), the jobs file's JSON Schema (`tickd schema`) against the
//! shipped and README examples, and the systemd unit (`systemd-analyze verify` and `security`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::tickd;

/// `tickd ARGS`, which must succeed: its stdout.
fn stdout_of(args: &[&str]) -> String {
    let out = tickd().args(args).output().expect("run tickd");
    assert!(
        out.status.success(),
        "tickd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The subcommands `tickd --help` lists (but `help`): what the man page must cover, found
/// independently of the man page's own generator.
fn subcommands() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let commands: Vec<String> = help
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands: section")
        .lines()
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(commands.len() >= 10, "{help}");
    commands
}

#[test]
fn the_man_page_lists_every_subcommand_and_each_has_a_page() {
    let page = stdout_of(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH tickd 1"),
        "{page}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    stdout_of(&["man", "--out-dir", &dir.path().display().to_string()]);
    assert!(dir.path().join("tickd.1").is_file());
    for command in subcommands() {
        // roff escapes the dash: tickd\-run(1).
        let roff_name = format!("tickd\\-{}(1)", command.replace('-', "\\-"));
        assert!(page.contains(&roff_name), "{command} is not in:\n{page}");
        let sub_page = dir.path().join(format!("tickd-{command}.1"));
        let text = fs::read_to_string(&sub_page).unwrap_or_default();
        assert!(text.contains(".SH SYNOPSIS"), "{}", sub_page.display());
    }
    // The internal keeper stays out.
    assert!(!page.contains("keeper"), "{page}");
}

#[test]
fn completion_scripts_are_generated_and_bash_parses_its_own() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        assert!(script.contains("tickd"), "{shell}: {script}");
        // Each subcommand is offered.
        for command in subcommands() {
            assert!(script.contains(&command), "{shell}: no {command}");
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tickd.bash");
    fs::write(&path, stdout_of(&["completions", "bash"])).expect("write");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tickd()
        .args(["completions", "tcsh"])
        .output()
        .expect("tickd");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// The schema as a validator.
fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&stdout_of(&["schema"])).expect("the schema is JSON");
    jsonschema::draft7::new(&schema).expect("a valid draft 7 schema")
}

/// TOML text as the JSON the schema describes.
fn as_json(toml_text: &str) -> serde_json::Value {
    let table: toml::Table = toml::from_str(toml_text).expect("TOML");
    serde_json::to_value(table).expect("JSON")
}

/// The problems the schema finds in `toml_text`, as text.
fn schema_errors(validator: &jsonschema::Validator, toml_text: &str) -> Vec<String> {
    let json = as_json(toml_text);
    validator
        .iter_errors(&json)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn repo_file(path: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

/// The ```toml blocks of README.md that are jobs files (not those that start `# Cargo.toml`).
fn readme_toml_blocks() -> Vec<String> {
    let readme = repo_file("README.md");
    let blocks: Vec<String> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .filter(|block| !block.starts_with("# Cargo.toml"))
        .map(str::to_owned)
        .collect();
    assert!(blocks.len() >= 4, "README lost its examples");
    blocks
}

/// The jobs files the repository ships: the example, the .deb's /etc/tickd/jobs.toml and the
/// library example's.
const SHIPPED: [&str; 3] = [
    "jobs.toml",
    "contrib/debian/jobs.toml",
    "examples/embedded.toml",
];

#[test]
fn the_shipped_and_readme_examples_match_the_schema() {
    let validator = validator();
    let mut examples: Vec<(String, String)> = SHIPPED
        .iter()
        .map(|path| (path.to_string(), repo_file(path)))
        .collect();
    examples.extend(
        readme_toml_blocks()
            .into_iter()
            .enumerate()
            .map(|(i, block)| (format!("README.md toml block {}", i + 1), block)),
    );
    for (name, text) in examples {
        let errors = schema_errors(&validator, &text);
        assert!(errors.is_empty(), "{name}: {errors:#?}\n{text}");
    }
}

#[test]
fn the_schema_refuses_what_the_parser_refuses() {
    let validator = validator();
    let dir = tempfile::tempdir().expect("tempdir");
    for (bad, what) in [
        (
            "[jobs.a]\nevery = \"1s\"\nhandler = \"log\"\nevry = \"2s\"\n",
            "evry",
        ),
        ("[jobs.a]\nevery = 5\nhandler = \"log\"\n", "every"),
        ("[daemon]\nshutdown_timout = \"1s\"\n", "shutdown_timout"),
        ("[jbos.a]\nevery = \"1s\"\n", "jbos"),
        (
            "[jobs.a]\nevery = \"1s\"\nshell = \"true\"\noverlap = \"sometimes\"\n",
            "sometimes",
        ),
        ("[jobs.a]\nevery = \"1s\"\ncommand = \"ls -l\"\n", "command"),
        ("[jobs.\"a b\"]\nevery = \"1s\"\nhandler = \"log\"\n", "a b"),
    ] {
        let errors = schema_errors(&validator, bad);
        assert!(
            errors.iter().any(|e| e.contains(what)),
            "the schema accepted {bad:?}: {errors:?}"
        );
        // And tickd itself refuses it: the schema is no stricter than the parser here.
        let path = dir.path().join("jobs.toml");
        fs::write(&path, bad).expect("write");
        let out = tickd().arg("check").arg(&path).output().expect("check");
        assert_eq!(out.status.code(), Some(2), "tickd check accepted {bad:?}");
    }
}

/// `systemd-analyze`, or `None` (outside CI only) with the reason printed.
fn systemd_analyze() -> Option<PathBuf> {
    match which::which("systemd-analyze") {
        Ok(path) => Some(path),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "CI=true but no systemd-analyze on PATH: scripts/install-systemd-analyze.sh \
             installs it (the Debian systemd package, as root)"
        ),
        Err(_) => {
            eprintln!("skipped: no systemd-analyze on PATH (apt-get install systemd)");
            None
        }
    }
}

/// The shipped unit in a temp dir, running the tickd under test (`verify` wants ExecStart's
/// binary to exist), with its man pages in `man/man1` for `Documentation=man:tickd(1)`.
fn unit_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let man1 = dir.path().join("man/man1");
    fs::create_dir_all(&man1).expect("mkdir");
    stdout_of(&["man", "--out-dir", &man1.display().to_string()]);
    let unit = repo_file("contrib/systemd/tickd.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/tickd "), "{unit}");
    let path = dir.path().join("tickd.service");
    fs::write(
        &path,
        unit.replace("/usr/local/bin/tickd", env!("CARGO_BIN_EXE_tickd")),
    )
    .expect("write");
    (dir, path)
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn systemd_analyze_verify_finds_nothing_in_the_unit() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let (dir, path) = unit_copy();
    let mut command = Command::new(analyze);
    command.arg("verify");
    if which::which("man").is_ok() {
        command.env("MANPATH", dir.path().join("man"));
    } else {
        eprintln!("no man on PATH: Documentation=man:tickd(1) not checked");
        command.arg("--man=no");
    }
    let out = command.arg(&path).output().expect("systemd-analyze verify");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    // verify also exits 0 on some warnings: anything it says about the unit is a finding.
    assert!(!text.contains("tickd.service"), "{text}");
}

/// The sandbox took the unit from 9.6 UNSAFE to 2.9 OK; this keeps it there.
#[test]
fn systemd_analyze_security_scores_the_unit_at_most_2_9() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let (_dir, path) = unit_copy();
    // The threshold is the exposure times ten; over it, the exit code is non-zero.
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--threshold=29"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Overall exposure level"), "{text}");
}
