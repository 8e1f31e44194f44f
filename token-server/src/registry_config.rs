//! What a distribution registry needs to trust this server: the key
//! material file and the `auth.token` block of its config.

use std::path::{Path, PathBuf};

use crate::defaults::write_private;
use crate::settings::Settings;

/// The registry major version to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryVersion {
    /// distribution 2.x: a certificate bundle, keys found by libtrust kid.
    #[value(name = "2")]
    V2,
    /// distribution 3.x: a JWKS file (plus the bundle, for `x5c` tokens).
    #[value(name = "3")]
    V3,
}

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// Writes `bundle.pem` (and `jwks.json` for 3.x) into `out` and returns the
/// YAML `auth:` block that points a registry at them.
pub fn write(
    settings: &Settings,
    version: RegistryVersion,
    out: &Path,
) -> Result<String, WriteError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| WriteError { path, source }
    };
    std::fs::create_dir_all(out).map_err(err(out))?;
    let out = std::fs::canonicalize(out).map_err(err(out))?;
    let bundle = out.join("bundle.pem");
    write_public(&bundle, settings.keys.cert_bundle().as_bytes()).map_err(err(&bundle))?;
    let mut block = format!(
        "auth:\n  token:\n    realm: {}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
        settings.public_url,
        settings.services[0],
        settings.issuer,
        bundle.display()
    );
    if version == RegistryVersion::V3 {
        let jwks = out.join("jwks.json");
        let body = serde_json::to_vec_pretty(&settings.keys.jwks()).unwrap_or_default();
        write_public(&jwks, &body).map_err(err(&jwks))?;
        block.push_str(&format!("    jwks: {}\n", jwks.display()));
    }
    if settings.services.len() > 1 {
        block.push_str(&format!(
            "# This server also accepts the services: {}. Each registry uses one.\n",
            settings.services[1..].join(", ")
        ));
    }
    Ok(block)
}

/// Certificates and public keys are not secret, but are written the same
/// atomic way; the registry runs as its own user and must read them.
fn write_public(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    write_private(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}
