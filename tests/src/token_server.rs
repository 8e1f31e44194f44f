//! The `regauth-token-server` fixture: keys, config, process, readiness.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::bins::token_server_bin;
use crate::net::free_port;
use crate::pki::{CertifiedKey, ServerTls};
use crate::process::{
    ChildGuard, CmdOutput, PORT_ATTEMPTS, Readiness, address_in_use, run, run_with_stdin,
    wait_ready,
};
use crate::secrets::{random_bytes, write_secret_file};
use crate::token_client::{TokenClient, http_client_builder};
use crate::tools::htpasswd;

/// The registry `service` (JWT `aud`) every test world uses.
pub const SERVICE: &str = "registry.test";
/// The token issuer every test world uses.
pub const ISSUER: &str = "regauth-test";
/// How long the server gets to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound for the server's one-shot subcommands.
const SUBCOMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Default policy: each account owns its namespace; everything else is denied.
pub const DEFAULT_POLICY: &str = r#"policy:
  - comment: each account owns its namespace
    kind: account
    name: "*"
    type: repository
    resource: "${name}/**"
    actions: ["*"]
"#;

/// A configured account and its clear-text password (known only to the test).
#[derive(Debug, Clone)]
pub struct Account {
    /// Account name.
    pub name: String,
    /// Clear-text password.
    pub password: String,
    /// Labels written into the config.
    pub labels: Vec<(String, String)>,
}

/// Builds and starts a [`TokenServer`].
#[derive(Debug, Clone)]
pub struct TokenServerBuilder {
    accounts: Vec<Account>,
    htpasswd_users: Vec<(String, String)>,
    policy: String,
    env: Vec<(String, String)>,
    alg: &'static str,
    embed_x5c: bool,
    extra_config: String,
    tls: Option<ServerTls>,
    serve_args: Vec<String>,
    hash_args: Vec<String>,
}

impl Default for TokenServerBuilder {
    fn default() -> Self {
        Self {
            accounts: Vec::new(),
            htpasswd_users: Vec::new(),
            policy: DEFAULT_POLICY.to_owned(),
            env: Vec::new(),
            alg: "ES256",
            embed_x5c: false,
            extra_config: String::new(),
            tls: None,
            serve_args: Vec::new(),
            hash_args: Vec::new(),
        }
    }
}

impl TokenServerBuilder {
    /// A builder with no accounts and [`DEFAULT_POLICY`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a config account whose bcrypt hash comes from `hash-password`.
    pub fn account(mut self, name: &str, password: &str, labels: &[(&str, &str)]) -> Self {
        self.accounts.push(Account {
            name: name.to_owned(),
            password: password.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        self
    }

    /// Extra arguments for `serve`, such as `--log-format json`.
    pub fn serve_args(mut self, args: &[&str]) -> Self {
        self.serve_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Extra arguments for `hash-password` when config accounts are hashed,
    /// such as `--argon2` or `--cost 5`.
    pub fn hash_args(mut self, args: &[&str]) -> Self {
        self.hash_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Adds a user to an htpasswd file made with `htpasswd -B`.
    pub fn htpasswd_user(mut self, name: &str, password: &str) -> Self {
        self.htpasswd_users
            .push((name.to_owned(), password.to_owned()));
        self
    }

    /// Replaces the policy; `policy_yaml` is a complete top-level `policy:` block.
    pub fn policy(mut self, policy_yaml: &str) -> Self {
        self.policy = policy_yaml.to_owned();
        self
    }

    /// Signs with a key of this algorithm (`ES256`, the default, or `RS256`).
    pub fn alg(mut self, alg: &'static str) -> Self {
        self.alg = alg;
        self
    }

    /// Appends top-level YAML (for example an `issuers:` or `tls:` section)
    /// to the config. Relative paths in it resolve against the server's dir.
    pub fn extra_config(mut self, yaml: &str) -> Self {
        self.extra_config.push_str(yaml);
        if !yaml.ends_with('\n') {
            self.extra_config.push('\n');
        }
        self
    }

    /// Serves HTTPS only, with a `tls:` section: the certificate and key go to
    /// `tls/server.crt` and `tls/server.key`, the client CA (if any) to
    /// `tls/client-ca.pem`. `public_url` becomes `https://127.0.0.1:PORT`,
    /// and the fixture's clients trust exactly `tls.ca_pem`.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Turns on `embed_x5c`, so every token carries its certificate.
    pub fn embed_x5c(mut self) -> Self {
        self.embed_x5c = true;
        self
    }

    /// Sets an environment variable for the `serve` process (e.g. `REGAUTH_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes keys and config under `parent/token-server` and starts the server.
    pub fn start(self, parent: &Path) -> TokenServer {
        let dir = parent.join("token-server");
        let keys = dir.join("keys");
        std::fs::create_dir_all(&dir).expect("create token-server dir");

        let bin = token_server_bin();
        generate_keys(&bin, &keys, self.alg);
        write_secret_file(&keys.join("refresh.secret"), &random_bytes(48));

        let mut body = format!(
            "issuer: {ISSUER}\n\
             services: [{SERVICE}]\n\
             access_token_ttl: 5m\n\
             refresh_token_ttl: 1h\n\
             signing_keys:\n  - key: keys/signing.key\n    cert: keys/signing.crt\n\
             embed_x5c: {}\n\
             refresh_secret_file: keys/refresh.secret\n",
            self.embed_x5c
        );
        body.push_str("accounts:");
        if self.accounts.is_empty() {
            body.push_str(" []");
        }
        body.push('\n');
        for account in &self.accounts {
            let hash = hash_password_with(&account.password, &self.hash_args);
            body.push_str(&format!(
                "  - name: {}\n    password_hash: {}\n",
                yaml_str(&account.name),
                yaml_str(&hash)
            ));
            if !account.labels.is_empty() {
                let labels: Vec<String> = account
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{}: {}", yaml_str(k), yaml_str(v)))
                    .collect();
                body.push_str(&format!("    labels: {{{}}}\n", labels.join(", ")));
            }
        }
        if !self.htpasswd_users.is_empty() {
            let file = dir.join("htpasswd");
            for (i, (name, password)) in self.htpasswd_users.iter().enumerate() {
                add_htpasswd_user(&file, name, password, i == 0);
            }
            body.push_str("htpasswd_files: [htpasswd]\n");
        }
        body.push_str(&self.policy);
        if !self.policy.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&self.extra_config);
        if let Some(tls) = &self.tls {
            body.push_str(&write_tls_files(&dir, tls));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let server_ca_pem = self.tls.as_ref().map(|t| t.ca_pem.clone());
        let config_path = dir.join("config.yml");

        let mut attempt = 0;
        let (process, port, client) = loop {
            attempt += 1;
            let port = free_port();
            let url = format!("{scheme}://127.0.0.1:{port}");
            let config = format!("listen: 127.0.0.1:{port}\npublic_url: {url}\n{body}");
            std::fs::write(&config_path, &config).expect("write token server config");

            let mut cmd = serve_command(&bin, &config_path, parent, &self.env);
            cmd.args(&self.serve_args);
            let mut process = ChildGuard::spawn(cmd, &dir, "token-server");
            let client = TokenClient::with_http(&url, https_client(server_ca_pem.as_deref(), None));
            match wait_ready(&mut process, READY_TIMEOUT, || {
                (client.healthz() == Some(200)).then_some(())
            }) {
                Readiness::Ready(()) => break (process, port, client),
                Readiness::Exited(_)
                    if attempt < PORT_ATTEMPTS && address_in_use(&process.logs()) =>
                {
                    continue;
                }
                Readiness::Exited(status) => panic!(
                    "token server exited early ({status})\nconfig:\n{config}\n{}",
                    process.logs()
                ),
                Readiness::TimedOut => panic!(
                    "token server did not answer GET /healthz with 200 within {READY_TIMEOUT:?}\n{}",
                    process.logs()
                ),
            }
        };

        let mut accounts = self.accounts;
        accounts.extend(
            self.htpasswd_users
                .into_iter()
                .map(|(name, password)| Account {
                    name,
                    password,
                    labels: Vec::new(),
                }),
        );
        TokenServer {
            process,
            port,
            scheme,
            server_ca_pem,
            dir,
            config_path,
            accounts,
            client,
            bin,
            cwd: parent.to_path_buf(),
            env: self.env,
            restarts: 0,
        }
    }
}

/// The `serve` command for `config_path`. It runs from `cwd` (the parent of
/// the server's dir), so relative paths only resolve if the server honours
/// "relative to the config file's directory".
fn serve_command(bin: &Path, config_path: &Path, cwd: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(config_path)
        .current_dir(cwd)
        .env_remove("REGAUTH_LOG")
        .env_remove("RUST_LOG");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

/// A running `regauth-token-server serve`, killed on drop.
#[derive(Debug)]
pub struct TokenServer {
    process: ChildGuard,
    port: u16,
    scheme: &'static str,
    server_ca_pem: Option<String>,
    dir: PathBuf,
    config_path: PathBuf,
    accounts: Vec<Account>,
    client: TokenClient,
    bin: PathBuf,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    restarts: usize,
}

impl TokenServer {
    /// The operating system process id of the running `serve` process
    /// (for sending it signals).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits up to `timeout` for the `serve` process to exit by itself (for
    /// example after SIGTERM) and returns its status; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `serve` again, with the same config file, port and environment,
    /// after the previous process ended (see [`TokenServer::wait_exit`]), and
    /// waits until it answers `/healthz`. The new process logs to
    /// `token-server.restart-N.*.log`; [`TokenServer::logs`] shows only it.
    ///
    /// Panics if the old process still runs, or the new one does not become
    /// ready (for example because another process took the port meanwhile).
    pub fn restart(&mut self) {
        assert!(
            self.process.exited().is_some(),
            "restart: the previous token server process (pid {}) still runs",
            self.process.pid()
        );
        self.restarts += 1;
        let cmd = serve_command(&self.bin, &self.config_path, &self.cwd, &self.env);
        let name = format!("token-server.restart-{}", self.restarts);
        let mut process = ChildGuard::spawn(cmd, &self.dir, &name);
        let client = &self.client;
        match wait_ready(&mut process, READY_TIMEOUT, || {
            (client.healthz() == Some(200)).then_some(())
        }) {
            Readiness::Ready(()) => {}
            Readiness::Exited(status) => panic!(
                "restarted token server exited early ({status}) on port {}\n{}",
                self.port,
                process.logs()
            ),
            Readiness::TimedOut => panic!(
                "restarted token server did not answer GET /healthz with 200 within {READY_TIMEOUT:?}\n{}",
                process.logs()
            ),
        }
        self.process = process;
    }

    /// Base URL, `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// True when the server was started with [`TokenServerBuilder::tls`].
    pub fn is_tls(&self) -> bool {
        self.server_ca_pem.is_some()
    }

    /// The CA certificate (PEM) that issued the server's TLS certificate.
    pub fn server_ca_pem(&self) -> &str {
        self.server_ca_pem
            .as_deref()
            .expect("the token server was started without TLS")
    }

    /// The file holding [`TokenServer::server_ca_pem`] (for `ctr --tlscacert`).
    pub fn server_ca_path(&self) -> PathBuf {
        assert!(self.is_tls(), "the token server was started without TLS");
        self.dir.join(TLS_DIR).join(SERVER_CA_FILE)
    }

    /// A `/token` client that trusts the server's CA and presents `identity`
    /// as its TLS client certificate (`None`: no certificate).
    pub fn client_with_cert(&self, identity: Option<&CertifiedKey>) -> TokenClient {
        TokenClient::with_http(
            &self.url(),
            https_client(self.server_ca_pem.as_deref(), identity),
        )
    }

    /// The token endpoint (the registry's realm).
    pub fn token_url(&self) -> String {
        format!("{}/token", self.url())
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client for `/token`.
    pub fn client(&self) -> &TokenClient {
        &self.client
    }

    /// The config file path.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The directory holding config, keys and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The signing certificate (PEM) that verifies access tokens.
    pub fn signing_cert_pem(&self) -> Vec<u8> {
        let path = self.dir.join("keys").join("signing.crt");
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// The clear-text password of a configured account or htpasswd user.
    pub fn password(&self, name: &str) -> &str {
        self.accounts
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.password.as_str())
            .unwrap_or_else(|| panic!("no account named {name}"))
    }

    /// All accounts and htpasswd users with their passwords.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// Everything the server wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.process.stdout()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// Both output streams, labelled.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// Runs `registry-config --registry 2 --out out_dir` and returns its stdout
    /// (the registry's `auth:` block).
    pub fn registry_config(&self, out_dir: &Path) -> String {
        let mut cmd = Command::new(token_server_bin());
        cmd.arg("registry-config")
            .arg("--config")
            .arg(&self.config_path)
            .args(["--registry", "2", "--out"])
            .arg(out_dir);
        let out = run(cmd, SUBCOMMAND_TIMEOUT);
        out.assert_success("regauth-token-server registry-config");
        out.stdout
    }
}

/// Where [`TokenServerBuilder::tls`] writes its files, under the server dir.
const TLS_DIR: &str = "tls";
/// The server CA as written for clients (not referenced by the config).
const SERVER_CA_FILE: &str = "server-ca.pem";

/// Writes the TLS files under `dir/tls` and returns the config's `tls:` section.
fn write_tls_files(dir: &Path, tls: &ServerTls) -> String {
    let tls_dir = dir.join(TLS_DIR);
    std::fs::create_dir_all(&tls_dir).expect("create tls dir");
    std::fs::write(tls_dir.join("server.crt"), &tls.cert_pem).expect("write server.crt");
    write_secret_file(&tls_dir.join("server.key"), tls.key_pem.as_bytes());
    std::fs::write(tls_dir.join(SERVER_CA_FILE), &tls.ca_pem).expect("write server-ca.pem");
    let mut section = format!("tls:\n  cert: {TLS_DIR}/server.crt\n  key: {TLS_DIR}/server.key\n");
    if let Some(client_ca) = &tls.client_ca_pem {
        std::fs::write(tls_dir.join("client-ca.pem"), client_ca).expect("write client-ca.pem");
        section.push_str(&format!("  client_ca: {TLS_DIR}/client-ca.pem\n"));
    }
    section
}

/// The fixture's HTTP client: plain HTTP when `server_ca_pem` is `None`;
/// otherwise it trusts only that CA and presents `identity`, if any.
fn https_client(
    server_ca_pem: Option<&str>,
    identity: Option<&CertifiedKey>,
) -> reqwest::blocking::Client {
    let mut builder = http_client_builder();
    if let Some(ca) = server_ca_pem {
        let ca = reqwest::Certificate::from_pem(ca.as_bytes()).expect("server CA is PEM");
        builder = builder.tls_certs_only([ca]);
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity.identity());
    }
    builder.build().expect("build HTTPS client")
}

/// Hashes `password` with `regauth-token-server hash-password` (bcrypt).
pub fn hash_password(password: &str) -> String {
    hash_password_with(password, &[])
}

/// Hashes `password` with `regauth-token-server hash-password ARGS`.
pub fn hash_password_with(password: &str, args: &[String]) -> String {
    let mut cmd = Command::new(token_server_bin());
    cmd.arg("hash-password").args(args);
    let out = run_with_stdin(cmd, password.as_bytes(), SUBCOMMAND_TIMEOUT);
    out.assert_success("regauth-token-server hash-password");
    let hash = out.stdout.trim().to_owned();
    assert!(
        hash.starts_with("$2") || hash.starts_with("$argon2"),
        "hash-password did not print a password hash: {hash:?}"
    );
    hash
}

/// Runs `keys generate --alg ES256 --out dir` and checks what it wrote.
fn generate_keys(bin: &Path, dir: &Path, alg: &str) {
    let mut cmd = Command::new(bin);
    cmd.args(["keys", "generate", "--alg", alg, "--out"])
        .arg(dir);
    let out: CmdOutput = run(cmd, SUBCOMMAND_TIMEOUT);
    out.assert_success("regauth-token-server keys generate");
    let key = dir.join("signing.key");
    let cert = dir.join("signing.crt");
    let key_pem = std::fs::read_to_string(&key).expect("read signing.key");
    assert!(
        key_pem.contains("-----BEGIN PRIVATE KEY-----"),
        "signing.key is not PKCS#8 PEM"
    );
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&key)
            .expect("stat signing.key")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600, "signing.key must be mode 0600");
    let cert_pem = std::fs::read_to_string(&cert).expect("read signing.crt");
    assert!(
        cert_pem.contains("-----BEGIN CERTIFICATE-----"),
        "signing.crt is not a certificate PEM"
    );
}

fn add_htpasswd_user(file: &Path, name: &str, password: &str, create: bool) {
    let mut cmd = Command::new(htpasswd());
    cmd.arg("-B").arg("-b");
    if create {
        cmd.arg("-c");
    }
    cmd.arg(file).arg(name).arg(password);
    run(cmd, SUBCOMMAND_TIMEOUT).assert_success("htpasswd -B");
}

/// Quotes a string as a YAML double-quoted scalar (JSON string syntax).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("serialize string")
}
