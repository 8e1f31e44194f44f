//! The token server's container image, built by `deploy/container/build.sh`
//! with `docker build` from the shared static release build: what it holds,
//! that two builds of one commit are the same image, and that it serves a
//! real registry as a non-root user, resolving issuers by name.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use regauth_e2e::bins::{token_server_bin, workspace_root};
use regauth_e2e::container_image::{
    Container, IMAGE_UID, SOURCE_URL, build_image, chown_recursive, owned_dir, proc_status,
    save_image,
};
use regauth_e2e::credential_helper::audit::log_field;
use regauth_e2e::dns::Dnsmasq;
use regauth_e2e::docker::{DockerCli, Dockerd};
use regauth_e2e::net::free_port;
use regauth_e2e::oci::{build_oci_image, sha256_digest};
use regauth_e2e::oidc_issuer::OidcIssuer;
use regauth_e2e::oidc_issuer::config::{IssuerConfig, issuers_yaml};
use regauth_e2e::process::run;
use regauth_e2e::registry::Registry;
use regauth_e2e::release::release_dir;
use regauth_e2e::secrets::random_password;
use regauth_e2e::skopeo::{Auth, Skopeo};
use regauth_e2e::token_client::TokenClient;
use tempfile::TempDir;

/// The tag every test builds.
const TAG: &str = "regauth/token-server:e2e";
/// The embedded default's registry `service`.
const DEFAULT_SERVICE: &str = "registry.local";

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("regauth-e2e-image-")
        .tempdir()
        .expect("create temp dir")
}

/// `git -C WORKSPACE ARGS…`, trimmed stdout.
fn git(args: &[&str]) -> String {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(workspace_root()).args(args);
    let out = run(cmd, Duration::from_secs(30));
    out.assert_success("git");
    out.stdout.trim().to_owned()
}

/// RFC 3339 UTC of a Unix time, as `date` writes it.
fn rfc3339(epoch: &str) -> String {
    let mut cmd = Command::new("date");
    cmd.args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"]);
    let out = run(cmd, Duration::from_secs(10));
    out.assert_success("date");
    out.stdout.trim().to_owned()
}

/// The ELF program interpreter (`PT_INTERP`) of a 64-bit little-endian
/// executable, `None` when it has none (a static binary).
fn elf_interpreter(elf: &[u8]) -> Option<String> {
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1);
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        let p_type = u32::from_le_bytes([elf[ph], elf[ph + 1], elf[ph + 2], elf[ph + 3]]);
        (p_type == 3).then(|| {
            let (offset, size) = (u64_at(ph + 8), u64_at(ph + 32));
            String::from_utf8_lossy(&elf[offset..offset + size])
                .trim_end_matches('\0')
                .to_owned()
        })
    })
}

/// A private daemon under `dir` holding the image, and a CLI for it.
fn daemon_with_image(dir: &std::path::Path) -> (Dockerd, DockerCli) {
    let daemon = Dockerd::start(dir);
    build_image(&daemon, TAG);
    let cli = daemon.cli(&dir.join("cli"));
    (daemon, cli)
}

/// Polls `GET url` until it answers `status`, or panics with `logs()`.
fn wait_for_status(url: &str, status: u16, timeout: Duration, logs: impl Fn() -> String) {
    let http = regauth_e2e::token_client::http_client();
    let deadline = Instant::now() + timeout;
    loop {
        let got = http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .ok()
            .map(|r| r.status().as_u16());
        if got == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} answered {got:?}, not {status}, within {timeout:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn image_is_static_non_root_labelled_and_the_same_from_two_daemons() {
    let temp = temp_dir();
    // Two daemons with nothing in common: no shared build cache, no layers.
    let first_daemon = Dockerd::start(&temp.path().join("a"));
    let second_daemon = Dockerd::start(&temp.path().join("b"));
    let first = build_image(&first_daemon, TAG);
    let second = build_image(&second_daemon, TAG);
    assert_eq!(
        first.id, second.id,
        "the same commit must give the same image ID\n--- first ---\n{}\n--- second ---\n{}",
        first.log, second.log
    );

    let cli = first_daemon.cli(&temp.path().join("cli"));
    let saved = save_image(&cli, TAG, &temp.path().join("saved"));
    assert_eq!(
        sha256_digest(&saved.config_bytes),
        first.id,
        "the ID is the config's digest"
    );

    // What the image is configured to do.
    let config = &saved.config["config"];
    assert_eq!(
        config["User"],
        format!("{IMAGE_UID}:{IMAGE_UID}"),
        "{config}"
    );
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/regauth-token-server"])
    );
    assert_eq!(config["Cmd"], serde_json::json!(["serve"]));
    let env: Vec<&str> = config["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(env.contains(&"REGAUTH_DATA_DIR=/data"), "{env:?}");
    assert!(config["Volumes"]["/data"].is_object(), "{config}");

    // Labels: version, revision, source, and a creation time that is the
    // commit's, everywhere a time appears.
    let labels = &config["Labels"];
    let bin = release_dir().join("regauth-token-server");
    let mut version = Command::new(&bin);
    version.arg("--version");
    let version = run(version, Duration::from_secs(10)).stdout;
    assert_eq!(
        format!(
            "regauth-token-server {}",
            labels["org.opencontainers.image.version"]
                .as_str()
                .unwrap_or("?")
        ),
        version.trim()
    );
    let head = git(&["rev-parse", "HEAD"]);
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    assert!(
        revision == head || revision == format!("{head}-dirty"),
        "revision label {revision:?} for HEAD {head}"
    );
    assert_eq!(labels["org.opencontainers.image.source"], SOURCE_URL);
    let commit_time: u64 = git(&["log", "-1", "--format=%ct"])
        .parse()
        .expect("commit time");
    let created = rfc3339(&commit_time.to_string());
    assert_eq!(labels["org.opencontainers.image.created"], created.as_str());
    assert_eq!(saved.config["created"], created.as_str());
    for step in saved.config["history"].as_array().expect("history") {
        assert_eq!(step["created"], created.as_str(), "{step}");
    }
    assert!(saved.config.get("container").is_none() && config.get("Image").is_none());

    // Exactly these files, root's except the data directory, all dated at
    // the commit.
    let paths: Vec<&str> = saved.files.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "data",
            "etc",
            "etc/group",
            "etc/nsswitch.conf",
            "etc/passwd",
            "etc/ssl",
            "etc/ssl/certs",
            "etc/ssl/certs/ca-certificates.crt",
            "usr",
            "usr/bin",
            "usr/bin/regauth-token-server",
        ]
    );
    for (path, entry) in &saved.files {
        assert_eq!(
            entry.mtime, commit_time,
            "{path} is not dated at the commit"
        );
        let expected_owner = if path == "data" {
            u64::from(IMAGE_UID)
        } else {
            0
        };
        assert_eq!(entry.owner, (expected_owner, expected_owner), "{path}");
    }
    assert_eq!(saved.files["data"].mode, 0o700);
    assert_eq!(saved.files["usr/bin/regauth-token-server"].mode, 0o755);
    let text = |path: &str| {
        String::from_utf8(saved.files[path].content.clone().expect("a file")).expect("UTF-8")
    };
    assert!(
        text("etc/passwd").contains(&format!("regauth:x:{IMAGE_UID}:{IMAGE_UID}:")),
        "{}",
        text("etc/passwd")
    );
    assert!(text("etc/group").contains(&format!("regauth:x:{IMAGE_UID}:")));
    assert!(text("etc/nsswitch.conf").contains("hosts: files dns"));
    assert_eq!(
        saved.files["etc/ssl/certs/ca-certificates.crt"]
            .content
            .as_deref(),
        Some(
            std::fs::read("/etc/ssl/certs/ca-certificates.crt")
                .expect("host CA bundle")
                .as_slice()
        ),
        "the image carries the build host's CA certificates"
    );
    let binary = saved.files["usr/bin/regauth-token-server"]
        .content
        .as_deref()
        .expect("the binary");
    assert_eq!(elf_interpreter(binary), None, "the binary must be static");

    // And from scratch, with no libc beside it, it runs.
    let out = cli.run(&["run", "--rm", "--network", "none", TAG, "--version"]);
    out.assert_success("docker run IMAGE --version");
    assert_eq!(out.stdout.trim(), version.trim());
}

#[test]
fn image_serves_a_registry_with_its_embedded_default_as_a_non_root_user() {
    let temp = temp_dir();
    let (_daemon, cli) = daemon_with_image(temp.path());
    let data = owned_dir(&temp.path().join("data"));
    let data_arg = format!("{}:/data", data.display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let password = random_password();
    let admin_password = format!("REGAUTH_ADMIN_PASSWORD={password}");
    let container = Container::run(
        &cli,
        &["--volume", &data_arg, "--env", &admin_password],
        TAG,
        &["serve", "--listen", &listen],
    );
    let base = format!("http://{listen}");
    wait_for_status(
        &format!("{base}/healthz"),
        200,
        Duration::from_secs(60),
        || container.logs(),
    );

    // The process runs as the image's user, with no capability at all.
    let pid = container.pid();
    let uid = proc_status(pid, "Uid");
    assert!(
        uid.split_whitespace().all(|id| id == IMAGE_UID.to_string()),
        "Uid: {uid}"
    );
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");

    // The embedded default put its key and secrets in the mounted data
    // directory, mode 0600, owned by that user.
    for file in ["signing.key", "signing.crt", "refresh.secret", "htpasswd"] {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(data.join(file))
            .unwrap_or_else(|e| panic!("{file} in the data directory: {e}\n{}", container.logs()));
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (IMAGE_UID, 0o600),
            "{file}"
        );
    }

    // It printed the registry's auth block, naming the bundle inside the
    // container; the registry on the host reads it from the mount.
    let logs = container.logs();
    let block_start = logs
        .find("auth:\n")
        .unwrap_or_else(|| panic!("no auth block:\n{logs}"));
    let block: String = logs[block_start..]
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        block.contains("rootcertbundle: /data/registry/bundle.pem"),
        "{block}"
    );
    let block = block.replace("/data/", &format!("{}/", data.display()));
    let registry = Registry::start_with_auth(
        &block,
        &format!("{base}/token"),
        DEFAULT_SERVICE,
        &temp.path().join("host"),
    );

    // skopeo pushes and pulls through it as the admin account.
    let skopeo = Skopeo::new(&temp.path().join("skopeo"));
    let image = build_oci_image(&temp.path().join("oci"));
    let reference = registry.reference("admin/demo");
    let pushed = skopeo.push(&image, &reference, Auth::Creds("admin", &password));
    pushed
        .output
        .assert_success("skopeo push through the container's token server");
    let pulled = skopeo.pull(
        &reference,
        &temp.path().join("pulled"),
        Auth::Creds("admin", &password),
    );
    pulled.assert_success("skopeo pull through the container's token server");
    let anonymous = skopeo.inspect(&reference, Auth::Anonymous, &[]);
    assert!(
        !anonymous.success(),
        "anonymous read of admin/demo:\n{}",
        anonymous.describe()
    );
    let logs = container.logs();
    assert!(
        logs.lines().any(|l| l.contains("regauth::audit")
            && log_field(l, "sub").as_deref() == Some("admin")
            && log_field(l, "granted").is_some_and(|g| g.contains("admin/demo:pull"))),
        "the container's audit log shows the grants:\n{logs}"
    );
}

#[test]
fn image_resolves_an_issuers_host_name_through_dns() {
    let temp = temp_dir();
    let (_daemon, cli) = daemon_with_image(temp.path());

    // An issuer known by name only: DNS says where it is.
    let issuer = OidcIssuer::start();
    let issuer_port = issuer
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let name = "issuer.regauth.test";
    let issuer_url = format!("http://{name}:{issuer_port}");
    issuer.announce_issuer(Some(&issuer_url));
    let dns = Dnsmasq::start(temp.path(), &[(name, Ipv4Addr::LOCALHOST)]);
    let resolv_conf = dns.write_resolv_conf(&temp.path().join("resolv.conf"));

    // A config of its own, with keys made by the same server, in a
    // directory the image's user owns.
    let config_dir = temp.path().join("config");
    std::fs::create_dir_all(&config_dir).expect("create config dir");
    let keys = config_dir.join("keys");
    for args in [
        vec![
            "keys",
            "generate",
            "--out",
            keys.to_str().expect("UTF-8 path"),
        ],
        vec![
            "keys",
            "secret",
            "--out",
            keys.join("refresh.secret").to_str().expect("UTF-8 path"),
        ],
    ] {
        let mut cmd = Command::new(token_server_bin());
        cmd.args(&args);
        run(cmd, Duration::from_secs(60)).assert_success("regauth-token-server keys");
    }
    let port = free_port();
    let config = format!(
        "listen: 127.0.0.1:{port}\n\
         issuer: regauth\n\
         services: [{DEFAULT_SERVICE}]\n\
         signing_keys:\n  - key: keys/signing.key\n    cert: keys/signing.crt\n\
         refresh_secret_file: keys/refresh.secret\n\
         {}",
        issuers_yaml(&[IssuerConfig::kubernetes("cluster", &issuer_url)])
    );
    std::fs::write(config_dir.join("server.yaml"), config).expect("write server.yaml");
    chown_recursive(&config_dir);

    let config_arg = format!("{}:/config:ro", config_dir.display());
    let resolv_arg = format!("{}:/etc/resolv.conf:ro", resolv_conf.display());
    let container = Container::run(
        &cli,
        &["--volume", &config_arg, "--volume", &resolv_arg],
        TAG,
        &["serve", "--config", "/config/server.yaml"],
    );
    // Ready means every issuer's keys were fetched: discovery at the
    // issuer's name, which only DNS can resolve in the container.
    let client = TokenClient::new(&format!("http://127.0.0.1:{port}"));
    wait_for_status(
        &format!("{}/readyz", client.base_url()),
        200,
        Duration::from_secs(60),
        || format!("{}\n{}", container.logs(), dns.logs()),
    );
    assert!(
        dns.queries().iter().any(|q| q == &format!("A {name}")),
        "the container asked DNS for {name}: {:?}\n{}",
        dns.queries(),
        dns.logs()
    );
    assert!(
        issuer.discovery_requests() >= 1 && issuer.jwks_requests() >= 1,
        "discovery {} and JWKS {} requests",
        issuer.discovery_requests(),
        issuer.jwks_requests()
    );
}

#[test]
fn kubernetes_deployment_runs_this_image_as_its_user() {
    let path = workspace_root().join("deploy/kubernetes/20-deployment.yaml");
    let text = std::fs::read_to_string(&path).expect("read the Deployment");
    let deployment: serde_json::Value =
        serde_saphyr::from_str(&text).expect("the Deployment is YAML");
    let pod = &deployment["spec"]["template"]["spec"];
    let image = pod["containers"][0]["image"]
        .as_str()
        .expect("a container image");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        image.ends_with(&format!("/regauth/token-server:{version}")),
        "the Deployment must run the image build.sh tags (regauth/token-server:{version}), not {image}"
    );
    assert_eq!(pod["securityContext"]["runAsUser"], IMAGE_UID);
    assert_eq!(pod["securityContext"]["runAsGroup"], IMAGE_UID);
    let dockerfile = std::fs::read_to_string(workspace_root().join("deploy/container/Dockerfile"))
        .expect("read the Dockerfile");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("USER {IMAGE_UID}:{IMAGE_UID}")),
        "the Dockerfile's USER is the Deployment's runAsUser"
    );
}
