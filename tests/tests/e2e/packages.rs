//! The Debian packages `regauth-token-server` and `docker-credential-regauth`,
//! built with cargo-deb from the shared static release build: their
//! metadata and contents, lintian's verdict, and a real `dpkg -i` (in a
//! sandbox whose `/etc`, `/usr` and `/var` are overlays) after which the
//! packaged server serves a registry from its unit's command line and skopeo
//! pulls through the packaged helper.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use regauth_e2e::bins::credential_helper_bin;
use regauth_e2e::credential_helper::audit::HELPER_CLIENT_ID;
use regauth_e2e::credential_helper::skopeo::write_cred_helpers_authfile;
use regauth_e2e::credential_helper::{HelperConfig, Identity, RegistryEntry};
use regauth_e2e::net::free_port;
use regauth_e2e::oci::build_oci_image;
use regauth_e2e::packages::{
    HELPER_PACKAGE, PackageSandbox, SERVER_PACKAGE, contents, control_file, debs, extract, field,
};
use regauth_e2e::process::{Readiness, run, wait_ready};
use regauth_e2e::registry::Registry;
use regauth_e2e::release::{build_id, release_dir};
use regauth_e2e::secrets::random_password;
use regauth_e2e::skopeo::{Auth, Skopeo, prepare_dir};
use regauth_e2e::token_client::TokenClient;
use regauth_e2e::tools::require_tool;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The service the packaged server.yaml names.
const PACKAGED_SERVICE: &str = "registry.local";
/// Where the helper package puts the kubelet plugin.
const KUBELET_PLUGIN: &str =
    "/usr/libexec/kubernetes/kubelet-plugins/credential-provider/exec/docker-credential-regauth";

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("regauth-e2e-deb-")
        .tempdir()
        .expect("create temp dir")
}

fn architecture() -> String {
    let mut cmd = Command::new(require_tool("dpkg", "dpkg"));
    cmd.arg("--print-architecture");
    let out = run(cmd, Duration::from_secs(10));
    out.assert_success("dpkg --print-architecture");
    out.stdout.trim().to_owned()
}

#[test]
fn packages_carry_the_binaries_units_configs_and_docs() {
    let debs = debs();
    let arch = architecture();
    for (deb, package, conffile) in [
        (&debs.server, SERVER_PACKAGE, "/etc/regauth/server.yaml"),
        (&debs.helper, HELPER_PACKAGE, "/etc/regauth/helper.yaml"),
    ] {
        assert_eq!(field(deb, "Package"), package);
        assert_eq!(field(deb, "Version"), format!("{VERSION}-1"));
        assert_eq!(field(deb, "Architecture"), arch);
        assert!(
            field(deb, "Maintainer").contains('@'),
            "{package}: Maintainer"
        );
        assert!(
            !field(deb, "Description").is_empty(),
            "{package}: Description"
        );
        assert_eq!(
            control_file(deb, "conffiles").as_deref().map(str::trim),
            Some(conffile),
            "{package}: conffiles"
        );

        let entries = contents(deb);
        for entry in &entries {
            assert!(
                entry.owner == "root/root" || entry.owner == "0/0",
                "{package}: {} is owned by {}",
                entry.path,
                entry.owner
            );
            if entry.link.is_none() {
                // Nothing writable by anyone but root.
                let bytes = entry.mode.as_bytes();
                assert!(
                    bytes.len() == 10 && bytes[5] != b'w' && bytes[8] != b'w',
                    "{package}: {} has mode {}",
                    entry.path,
                    entry.mode
                );
            }
        }
        let paths: BTreeSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        let bin = if package == SERVER_PACKAGE {
            "regauth-token-server"
        } else {
            "docker-credential-regauth"
        };
        for expected in [
            format!("/usr/bin/{bin}"),
            conffile.to_owned(),
            format!("/usr/share/man/man1/{bin}.1.gz"),
            format!("/usr/share/bash-completion/completions/{bin}"),
            format!("/usr/share/zsh/vendor-completions/_{bin}"),
            format!("/usr/share/fish/vendor_completions.d/{bin}.fish"),
            format!("/usr/share/doc/{package}/copyright"),
            format!("/usr/share/doc/{package}/changelog.Debian.gz"),
            format!("/usr/share/lintian/overrides/{package}"),
        ] {
            assert!(
                paths.contains(expected.as_str()),
                "{package} lacks {expected}: {paths:#?}"
            );
        }
        let binary = entries
            .iter()
            .find(|e| e.path == format!("/usr/bin/{bin}"))
            .expect("the binary");
        assert_eq!(binary.mode, "-rwxr-xr-x", "{package}: the binary's mode");

        // The packaged binary is the shared static build, stripped.
        let temp = temp_dir();
        let extracted = temp.path().join(bin);
        extract(deb, &format!("usr/bin/{bin}"), &extracted);
        assert_eq!(
            build_id(&extracted),
            build_id(&release_dir().join(bin)),
            "{package} must ship the static release build"
        );
        let unpacked = std::fs::metadata(&extracted)
            .expect("extracted binary")
            .len();
        let built = std::fs::metadata(release_dir().join(bin))
            .expect("release binary")
            .len();
        assert!(
            unpacked < built,
            "{package}: the packaged binary is stripped"
        );
    }

    // The server: both units, an example config set, the maintainer
    // scripts; it needs adduser for its system user.
    let server: BTreeSet<String> = contents(&debs.server).into_iter().map(|e| e.path).collect();
    for unit in ["service", "socket"] {
        let path = format!("/usr/lib/systemd/system/regauth-token-server.{unit}");
        assert!(server.contains(&path), "no {path}");
    }
    for page in ["serve", "check-config", "registry-config", "keys-generate"] {
        let path = format!("/usr/share/man/man1/regauth-token-server-{page}.1.gz");
        assert!(server.contains(&path), "no {path}");
    }
    assert!(server.contains("/usr/share/doc/regauth-token-server/examples/reference.yaml"));
    assert!(field(&debs.server, "Depends").contains("adduser"));
    let postinst = control_file(&debs.server, "postinst").expect("a postinst");
    assert!(postinst.contains("adduser --system"), "{postinst}");
    let postrm = control_file(&debs.server, "postrm").expect("a postrm");
    assert!(
        postrm.contains("purge") && postrm.contains("deluser"),
        "{postrm}"
    );

    // The helper: the kubelet plugin, linked into the exec plugin
    // directory, and the kubelet's CredentialProviderConfig example.
    let helper = contents(&debs.helper);
    let plugin = helper
        .iter()
        .find(|e| e.path == KUBELET_PLUGIN)
        .unwrap_or_else(|| panic!("no {KUBELET_PLUGIN}"));
    assert_eq!(
        plugin.link.as_deref(),
        Some("../../../../../bin/docker-credential-regauth")
    );
    assert!(helper.iter().any(|e| e.path
        == "/usr/share/doc/docker-credential-regauth/examples/credential-provider-config.yaml"));
}

#[test]
fn lintian_finds_nothing_wrong_with_the_packages() {
    let debs = debs();
    let mut cmd = Command::new(require_tool("lintian", "lintian"));
    cmd.arg("--fail-on")
        .arg("error,warning")
        .arg(&debs.server)
        .arg(&debs.helper);
    let out = run(cmd, Duration::from_secs(600));
    let tags: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        out.success() && tags.is_empty(),
        "lintian reports errors or warnings:\n{}",
        out.describe()
    );
}

#[test]
fn the_docs_describe_every_helper_action() {
    let mut cmd = Command::new(credential_helper_bin());
    cmd.arg("--help");
    let out = run(cmd, Duration::from_secs(10));
    out.assert_success("docker-credential-regauth --help");
    // The usage text lists one action per line under `actions:`, indented
    // two spaces; continuation lines are indented further.
    let usage: BTreeSet<String> = out
        .stdout
        .lines()
        .skip_while(|l| l.trim() != "actions:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let documented: BTreeSet<String> = regauth_docgen::helper_command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    assert!(
        usage.len() >= 7,
        "the usage text's actions: {usage:?}\n{}",
        out.stdout
    );
    assert_eq!(
        usage, documented,
        "the man page (regauth-docgen) and the helper's usage text list different actions"
    );
    assert!(out.stdout.contains("[--config FILE]"));
    assert!(
        regauth_docgen::helper_command()
            .get_arguments()
            .any(|a| a.get_long() == Some("config")),
        "the docs describe --config"
    );
}

/// `ExecStart=`, `ExecStartPre=`, `User=` and `Group=` of an installed unit.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn installed_packages_serve_a_registry_and_pull_through_the_packaged_helper() {
    let debs = debs();
    let temp = temp_dir();
    let sandbox = PackageSandbox::start(temp.path());
    let (server_deb, helper_deb) = (debs.server.to_string_lossy(), debs.helper.to_string_lossy());
    let host_unit = std::path::Path::new("/usr/lib/systemd/system/regauth-token-server.service");
    let host_had_unit = host_unit.exists();
    let install = sandbox.run(&["dpkg", "--install", &server_deb, &helper_deb]);
    install.assert_success("dpkg --install");
    assert!(sandbox.exists(&host_unit.to_string_lossy()));
    assert_eq!(
        host_unit.exists(),
        host_had_unit,
        "the install must stay inside the sandbox"
    );

    // postinst made the system user and a key set it alone may read.
    let user = sandbox.run(&["getent", "passwd", "regauth"]);
    user.assert_success("getent passwd regauth");
    let user_fields: Vec<&str> = user.stdout.trim().split(':').collect();
    let uid: u32 = user_fields[2].parse().expect("numeric uid");
    assert!(
        (1..1000).contains(&uid),
        "regauth is a system user: {}",
        user.stdout
    );
    assert_eq!(user_fields[5], "/nonexistent", "{}", user.stdout);
    for (path, mode) in [
        ("/etc/regauth/keys", "750 root regauth"),
        ("/etc/regauth/keys/signing.key", "640 root regauth"),
        ("/etc/regauth/keys/refresh.secret", "640 root regauth"),
        ("/etc/regauth/htpasswd", "640 root regauth"),
    ] {
        let stat = sandbox.run(&["stat", "-c", "%a %U %G", path]);
        stat.assert_success(&format!("stat {path}"));
        assert_eq!(stat.stdout.trim(), mode, "{path}");
    }

    // systemd's own check of both installed units.
    let analyze = sandbox.run(&[
        "systemd-analyze",
        "verify",
        "--man=no",
        "/usr/lib/systemd/system/regauth-token-server.service",
        "/usr/lib/systemd/system/regauth-token-server.socket",
    ]);
    assert!(
        analyze.success() && !analyze.stderr.contains("regauth-token-server."),
        "systemd-analyze verify of the installed units:\n{}",
        analyze.describe()
    );

    // Configure it as an admin would: a free port, and an account.
    let port = free_port();
    let config = sandbox
        .read("/etc/regauth/server.yaml")
        .replace("127.0.0.1:5001", &format!("127.0.0.1:{port}"));
    sandbox.write("/etc/regauth/server.yaml", &config, "0644");
    let password = random_password();
    let htpasswd = require_tool("htpasswd", "apache2-utils");
    sandbox
        .run(&[
            &htpasswd.to_string_lossy(),
            "-B",
            "-b",
            "/etc/regauth/htpasswd",
            "alice",
            &password,
        ])
        .assert_success("htpasswd -B");

    // Run the server the way its unit does: ExecStartPre, then ExecStart,
    // as the unit's user and group (systemd is not running here).
    let unit = sandbox.read("/usr/lib/systemd/system/regauth-token-server.service");
    let (run_user, run_group) = (unit_values(&unit, "User"), unit_values(&unit, "Group"));
    assert_eq!(
        (run_user.as_slice(), run_group.as_slice()),
        (&["regauth".to_owned()][..], &["regauth".to_owned()][..])
    );
    let as_user = |command: &str| -> Vec<String> {
        let mut argv = vec![
            "setpriv".to_owned(),
            "--reuid=regauth".to_owned(),
            "--regid=regauth".to_owned(),
            "--init-groups".to_owned(),
            "--".to_owned(),
        ];
        argv.extend(command.split_whitespace().map(str::to_owned));
        argv
    };
    for pre in unit_values(&unit, "ExecStartPre") {
        let argv = as_user(&pre);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        sandbox
            .run(&argv)
            .assert_success(&format!("ExecStartPre={pre}"));
    }
    let exec_start = unit_values(&unit, "ExecStart");
    assert_eq!(exec_start.len(), 1, "{unit}");
    let argv = as_user(&exec_start[0]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut server = sandbox.spawn(&argv, &[("REGAUTH_LOG", "info")], "packaged-server");
    let client = TokenClient::new(&format!("http://127.0.0.1:{port}"));
    match wait_ready(&mut server, Duration::from_secs(30), || {
        (client.healthz() == Some(200)).then_some(())
    }) {
        Readiness::Ready(()) => {}
        Readiness::Exited(status) => {
            panic!("the packaged server exited ({status})\n{}", server.logs())
        }
        Readiness::TimedOut => panic!("the packaged server did not answer\n{}", server.logs()),
    }

    // A registry trusting it, from the packaged registry-config.
    let auth_dir = temp.path().join("registry-auth");
    let auth_arg = auth_dir.to_string_lossy().into_owned();
    let block = sandbox.run(&[
        "regauth-token-server",
        "registry-config",
        "--config",
        "/etc/regauth/server.yaml",
        "--registry",
        "2",
        "--out",
        &auth_arg,
    ]);
    block.assert_success("registry-config");
    let registry = Registry::start_with_auth(
        &block.stdout,
        &format!("{}/token", client.base_url()),
        PACKAGED_SERVICE,
        temp.path(),
    );
    let skopeo = Skopeo::new(&temp.path().join("skopeo"));
    let image = build_oci_image(&temp.path().join("oci"));
    let reference = registry.reference("alice/demo");
    skopeo
        .push(&image, &reference, Auth::Creds("alice", &password))
        .output
        .assert_success("skopeo push as alice");

    // The packaged helper, configured in its packaged config file, with
    // alice's account.
    sandbox.write("/etc/regauth/alice.password", &password, "0600");
    let entry = RegistryEntry::new(
        &[&registry.host()],
        client.base_url(),
        Identity::Account {
            username: "alice".to_owned(),
            password_file: "/etc/regauth/alice.password".into(),
        },
    )
    .service(PACKAGED_SERVICE);
    sandbox.write(
        "/etc/regauth/helper.yaml",
        &HelperConfig::new().registry(entry).to_yaml(),
        "0644",
    );

    // skopeo in the sandbox finds docker-credential-regauth in /usr/bin,
    // and the helper finds /etc/regauth/helper.yaml by itself.
    let skopeo_dir = temp.path().join("skopeo-helper");
    prepare_dir(&skopeo_dir);
    let authfile = skopeo_dir.join("auth.json");
    write_cred_helpers_authfile(&authfile, &[&registry.host()], "regauth");
    let path_arg = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (policy, tmp, authfile_arg) = (
        path_arg(&skopeo_dir.join("policy.json")),
        path_arg(&skopeo_dir.join("tmp")),
        path_arg(&authfile),
    );
    let dest = format!("oci:{}:latest", temp.path().join("pulled").display());
    let source = format!("docker://{reference}");
    let (home, run_dir, conf) = (
        path_arg(&skopeo_dir.join("home")),
        path_arg(&skopeo_dir.join("run")),
        path_arg(&skopeo_dir.join("registries.conf")),
    );
    let pull = sandbox.run_with(
        &[
            "skopeo",
            "--policy",
            &policy,
            "--tmpdir",
            &tmp,
            "copy",
            "--src-tls-verify=false",
            "--authfile",
            &authfile_arg,
            &source,
            &dest,
        ],
        &[
            ("HOME", &home),
            ("XDG_RUNTIME_DIR", &run_dir),
            ("CONTAINERS_REGISTRIES_CONF", &conf),
        ],
        b"",
    );
    assert!(
        pull.success(),
        "skopeo pull through the packaged helper:\n{}\n{}",
        pull.describe(),
        server.logs()
    );
    // The unit logs JSON, one object per line.
    let audit = json_audit(&server.stderr());
    assert!(
        audit
            .iter()
            .any(|f| f["client_id"] == HELPER_CLIENT_ID && f["sub"] == "alice"),
        "the packaged helper exchanged alice's account:\n{}",
        server.logs()
    );
    assert!(
        audit.iter().any(|f| f["granted"]
            .as_str()
            .is_some_and(|g| g.contains("alice/demo:pull"))),
        "skopeo was granted the pull:\n{}",
        server.logs()
    );

    // The kubelet plugin at its conventional path answers a
    // CredentialProviderRequest with a credential the server takes.
    let request = serde_json::json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": format!("{}/alice/demo:latest", registry.host()),
    });
    let kubelet = sandbox.run_with(
        &[KUBELET_PLUGIN, "kubelet"],
        &[("HOME", &home)],
        request.to_string().as_bytes(),
    );
    kubelet.assert_success("the packaged kubelet plugin");
    let response: serde_json::Value =
        serde_json::from_str(&kubelet.stdout).expect("a CredentialProviderResponse");
    let auth = &response["auth"][registry.host().as_str()];
    let (username, secret) = (
        auth["username"].as_str().expect("username"),
        auth["password"].as_str().expect("password"),
    );
    let token = client.get_token(
        &[
            ("service", PACKAGED_SERVICE),
            ("scope", "repository:alice/demo:pull"),
        ],
        Some((username, secret)),
    );
    assert_eq!(token.status, 200, "{}", token.body);

    // Purge takes away the keys, the configs, the user and its group; the
    // one file the admin made is theirs, and dpkg leaves it.
    drop(server);
    sandbox
        .run(&["dpkg", "--purge", SERVER_PACKAGE, HELPER_PACKAGE])
        .assert_success("dpkg --purge");
    for path in [
        "/usr/bin/regauth-token-server",
        "/usr/bin/docker-credential-regauth",
        "/etc/regauth/keys",
        "/etc/regauth/htpasswd",
        "/etc/regauth/server.yaml",
        "/etc/regauth/helper.yaml",
        KUBELET_PLUGIN,
    ] {
        assert!(!sandbox.exists(path), "{path} survived the purge");
    }
    let left = sandbox.run(&["ls", "-A", "/etc/regauth"]);
    assert_eq!(left.stdout.trim(), "alice.password", "{}", left.describe());
    assert!(!sandbox.run(&["getent", "passwd", "regauth"]).success());
    assert!(!sandbox.run(&["getent", "group", "regauth"]).success());
}

/// The fields of every audit event in a `--log-format json` log.
fn json_audit(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|event| event["target"] == "regauth::audit")
        .map(|event| event["fields"].clone())
        .collect()
}
