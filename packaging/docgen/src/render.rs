//! Renders the pages and completion scripts into a directory.
//!
//! The output is a pure function of the command definitions: no dates, no
//! paths, so two runs on the same commit write the same bytes and the
//! packages built from them are reproducible.

use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;

use crate::{helper_command, server_command};

/// A page or script could not be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum DocgenError {
    /// A file or directory under the output directory could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The shells that get completion scripts, and where each script goes under
/// `completions/`, named as that shell's Debian directory expects.
const SHELLS: [(Shell, &str, &str); 3] = [
    (Shell::Bash, "bash", ""),
    (Shell::Zsh, "zsh", "_"),
    (Shell::Fish, "fish", ""),
];

/// Writes, under `out`, `man/NAME.1` for both programs (and one page per
/// server subcommand, `regauth-token-server-keys-generate.1` and so on) and
/// `completions/{bash,zsh,fish}/…`. Returns the files written, sorted.
pub fn write_all(out: &Path) -> Result<Vec<PathBuf>, DocgenError> {
    let mut written = Vec::new();
    for cmd in [server_command(), helper_command()] {
        let mut cmd = cmd;
        cmd.build();
        write_pages(&cmd, None, &out.join("man"), &mut written)?;
        write_completions(&cmd, &out.join("completions"), &mut written)?;
    }
    written.sort();
    Ok(written)
}

/// Writes the page of `cmd` and, recursively, of each visible subcommand.
fn write_pages(
    cmd: &Command,
    parent: Option<(&str, &str)>,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), DocgenError> {
    // A subcommand's page is named `parent-sub` and shows `parent sub` in
    // its synopsis, the way git's pages do.
    let (page, invocation) = match parent {
        Some((page, invocation)) => (
            format!("{page}-{}", cmd.get_name()),
            format!("{invocation} {}", cmd.get_name()),
        ),
        None => (cmd.get_name().to_owned(), cmd.get_name().to_owned()),
    };
    let mut bytes = Vec::new();
    let page_cmd = cmd.clone().display_name(&page).bin_name(&invocation);
    clap_mangen::Man::new(page_cmd)
        .source(format!("regauth {}", env!("CARGO_PKG_VERSION")))
        .manual("regauth")
        .render(&mut bytes)
        .map_err(|source| DocgenError::Write {
            path: dir.join(format!("{page}.1")),
            source,
        })?;
    // clap_mangen heads the after-help text EXTRA; man pages call it NOTES.
    let text = String::from_utf8_lossy(&bytes).replace("\n.SH EXTRA\n", "\n.SH NOTES\n");
    written.push(write(dir, &format!("{page}.1"), text.as_bytes())?);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, Some((&page, &invocation)), dir, written)?;
    }
    Ok(())
}

fn write_completions(
    cmd: &Command,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), DocgenError> {
    let name = cmd.get_name().to_owned();
    for (shell, sub, prefix) in SHELLS {
        let mut bytes = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut bytes);
        let file = match shell {
            Shell::Fish => format!("{name}.fish"),
            _ => format!("{prefix}{name}"),
        };
        written.push(write(&dir.join(sub), &file, &bytes)?);
    }
    Ok(())
}

fn write(dir: &Path, file: &str, bytes: &[u8]) -> Result<PathBuf, DocgenError> {
    std::fs::create_dir_all(dir).map_err(|source| DocgenError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let path = dir.join(file);
    std::fs::write(&path, bytes).map_err(|source| DocgenError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[PathBuf], root: &Path) -> Vec<String> {
        files
            .iter()
            .filter_map(|f| f.strip_prefix(root).ok())
            .map(|f| f.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn writes_a_page_per_subcommand_and_three_completions_per_program() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_all(dir.path()).unwrap();
        let names = names(&files, dir.path());
        for expected in [
            "man/regauth-token-server.1",
            "man/regauth-token-server-serve.1",
            "man/regauth-token-server-check-config.1",
            "man/regauth-token-server-keys.1",
            "man/regauth-token-server-keys-generate.1",
            "man/docker-credential-regauth.1",
            "man/docker-credential-regauth-doctor.1",
            "completions/bash/regauth-token-server",
            "completions/zsh/_regauth-token-server",
            "completions/fish/regauth-token-server.fish",
            "completions/bash/docker-credential-regauth",
            "completions/zsh/_docker-credential-regauth",
            "completions/fish/docker-credential-regauth.fish",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("-help")), "{names:?}");
    }

    #[test]
    fn pages_show_the_invocation_and_the_flags_the_binary_parses() {
        let dir = tempfile::tempdir().unwrap();
        write_all(dir.path()).unwrap();
        let page =
            std::fs::read_to_string(dir.path().join("man/regauth-token-server-serve.1")).unwrap();
        assert!(page.contains("regauth\\-token\\-server serve"), "{page}");
        for flag in ["config", "data\\-dir", "listen", "log\\-format"] {
            assert!(
                page.contains(&format!("\\-\\-{flag}")),
                "--{flag} in {page}"
            );
        }
        let helper =
            std::fs::read_to_string(dir.path().join("man/docker-credential-regauth.1")).unwrap();
        assert!(helper.contains("/etc/regauth/helper.yaml"), "{helper}");
    }

    #[test]
    fn output_is_the_same_on_every_run() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let files_a = write_all(a.path()).unwrap();
        write_all(b.path()).unwrap();
        for file in files_a {
            let rel = file.strip_prefix(a.path()).unwrap();
            assert_eq!(
                std::fs::read(&file).unwrap(),
                std::fs::read(b.path().join(rel)).unwrap(),
                "{}",
                rel.display()
            );
        }
    }
}
