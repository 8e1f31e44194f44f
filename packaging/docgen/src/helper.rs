//! The credential helper's command line, described for the docs.
//!
//! The helper itself has no clap: it reads `argv[1]` by hand, because docker
//! runs it once per pull and its start-up time is on that path. This builder
//! mirrors its usage text (`docker-credential-regauth --help`); the e2e test
//! `packages::the_docs_describe_every_helper_action` keeps the two equal.

use clap::{Arg, ArgAction, Command};

/// The helper's binary name.
pub const HELPER: &str = "docker-credential-regauth";

const ABOUT: &str = "Docker credential helper and kubelet image credential provider for regauth";

const LONG_ABOUT: &str = "\
Swaps the local identity (a Kubernetes service-account token, an OIDC token, \
a GitHub Actions token, a client certificate, or an account) for a short-lived \
registry credential from a regauth token server, and caches it.

docker, skopeo, podman, buildah, crane and nerdctl run it when their config \
names it in credHelpers (\"regauth\") or credsStore. It speaks the \
docker-credential-helpers protocol: the action is the first argument and the \
payload comes on stdin. A registry the config does not list gets exactly \
`credentials not found in native keychain` and exit status 1, so the client \
goes on anonymously; every other failure is reported as one.";

const AFTER_LONG_HELP: &str = "\
Config: --config FILE, then $REGAUTH_HELPER_CONFIG, then \
$XDG_CONFIG_HOME/regauth/helper.yaml (or ~/.config/regauth/helper.yaml), \
then /etc/regauth/helper.yaml.

Cache: cache_dir in the config, then $REGAUTH_CACHE_DIR, then \
$XDG_CACHE_HOME/regauth (or ~/.cache/regauth). Files are mode 0600.

Logs: REGAUTH_LOG=debug adds detail on stderr; stdout only carries the protocol.

docker login and logout: `docker login` calls store, which keeps nothing, \
because credentials come from the local identity; `docker logout` calls \
erase, which drops the cached credential so that the next get exchanges \
the identity again.";

/// The helper's actions and what each does, in the order of its usage text.
const ACTIONS: [(&str, &str); 7] = [
    (
        "get",
        "Read a registry URL on stdin and print its credential as JSON",
    ),
    (
        "store",
        "Accept and ignore a credential (credentials come from the local identity)",
    ),
    (
        "erase",
        "Read a registry URL on stdin and drop its cached credential",
    ),
    ("list", "Print the configured registry patterns"),
    ("version", "Print the version"),
    (
        "kubelet",
        "Kubelet image credential provider: CredentialProviderRequest on stdin, \
         CredentialProviderResponse on stdout (v1, v1beta1, v1alpha1)",
    ),
    (
        "doctor",
        "Check the config, identity, token server and exchange, step by step",
    ),
];

/// `docker-credential-regauth` as a clap command, for man pages and
/// completions only: the helper never parses with it.
pub fn helper_command() -> Command {
    let mut cmd = Command::new(HELPER)
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .long_about(LONG_ABOUT)
        .after_long_help(AFTER_LONG_HELP)
        .subcommand_value_name("ACTION")
        .subcommand_required(true)
        .disable_help_subcommand(true)
        // The helper answers -v and --version (and the `version` action).
        .disable_version_flag(true)
        .arg(
            Arg::new("version")
                .short('v')
                .long("version")
                .action(ArgAction::Version)
                .help("Print the version"),
        )
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .help("Read this config file instead of searching for one"),
        );
    for (name, about) in ACTIONS {
        let mut action = Command::new(name).about(about);
        if name == "doctor" {
            action = action.arg(
                Arg::new("target")
                    .value_name("HOST[/REPO]")
                    .help("The registry (and repository) to test a pull against"),
            );
        }
        cmd = cmd.subcommand(action);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_is_a_valid_clap_command() {
        helper_command().debug_assert();
    }

    #[test]
    fn config_comes_before_the_action() {
        let matches = helper_command()
            .try_get_matches_from([HELPER, "--config", "/etc/regauth/helper.yaml", "get"])
            .map_err(|e| e.to_string());
        let matches = match matches {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(matches.subcommand_name(), Some("get"));
    }
}
