//! Builds a tiny OCI image layout on disk for pushing with skopeo.

use std::path::{Path, PathBuf};

use serde_json::json;

/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed OCI layer.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// An image written as an OCI layout, with the digests of its parts.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The layout directory (holds `oci-layout`, `index.json`, `blobs/`).
    pub dir: PathBuf,
    /// The tag recorded in `index.json`.
    pub tag: String,
    /// `sha256:…` of the manifest as written locally.
    pub manifest_digest: String,
    /// `sha256:…` of the image config (survives layer recompression).
    pub config_digest: String,
    /// `sha256:…` of the uncompressed layer (its diff_id).
    pub layer_digest: String,
    /// Path of the single file inside the layer.
    pub file_name: String,
    /// Content of that file, unique per image.
    pub file_content: String,
}

impl OciImage {
    /// The skopeo transport reference, `oci:DIR:TAG`.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }
}

/// The host architecture in Go's naming (`amd64`, `arm64`, …), as image
/// configs and containerd's platform matcher use it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => panic!("no Go architecture name known for {other}"),
    }
}

/// `sha256:` followed by the lowercase hex SHA-256 of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Writes a one-layer image to a new OCI layout at `dir` (created if needed).
///
/// The layer holds one small file whose content is random, so every call
/// yields distinct layer, config and manifest digests.
pub fn build_oci_image(dir: &Path) -> OciImage {
    let tag = "latest".to_owned();
    let file_name = "regauth-e2e.txt".to_owned();
    let file_content = format!("regauth e2e image {}\n", crate::secrets::random_hex(16));

    let layer = single_file_tar(&file_name, file_content.as_bytes());
    let layer_digest = sha256_digest(&layer);

    let config = serde_json::to_vec(&json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": go_arch(),
        "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [ { "created": "2024-01-01T00:00:00Z", "created_by": "regauth-e2e" } ]
    }))
    .expect("serialize image config");
    let config_digest = sha256_digest(&config);

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [ {
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer_digest,
            "size": layer.len(),
        } ]
    }))
    .expect("serialize manifest");
    let manifest_digest = sha256_digest(&manifest);

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [ {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        } ]
    }))
    .expect("serialize index");

    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).expect("create blobs dir");
    for (digest, bytes) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        std::fs::write(blobs.join(hex), bytes).expect("write blob");
    }
    std::fs::write(dir.join("index.json"), index).expect("write index.json");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");

    OciImage {
        dir: dir.to_path_buf(),
        tag,
        manifest_digest,
        config_digest,
        layer_digest,
        file_name,
        file_content,
    }
}

/// Reads the manifest digest that `index.json` of the layout at `dir` lists
/// for `tag`.
pub fn layout_manifest_digest(dir: &Path, tag: &str) -> Option<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).ok()?).ok()?;
    index["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .map(str::to_owned)
}

/// Reads a blob of the layout at `dir` by digest.
pub fn layout_blob(dir: &Path, digest: &str) -> Option<Vec<u8>> {
    let hex = digest.strip_prefix("sha256:")?;
    std::fs::read(dir.join("blobs").join("sha256").join(hex)).ok()
}

fn single_file_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_704_067_200);
    builder
        .append_data(&mut header, name, content)
        .expect("append file to layer tar");
    builder.into_inner().expect("finish layer tar")
}
