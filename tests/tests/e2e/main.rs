//! End-to-end tests for regauth: the real token server binary behind a real
//! distribution registry 2.8, driven by skopeo, ctr/containerd and an OAuth2
//! client. Every test builds its own world on 127.0.0.1 in a temp directory.

// A test step that fails should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access_control;
mod adversarial;
mod container_image;
mod containerd_pull;
mod credential_helper_cache;
mod credential_helper_common;
mod credential_helper_doctor;
mod credential_helper_identities;
mod credential_helper_protocol;
mod deploy_manifests;
mod docker_common;
mod docker_credentials;
mod docker_login;
mod embedded_default;
mod fleet;
mod fleet_failures;
mod fleet_limiter;
mod fleet_revoke;
mod fleet_sentinel;
mod helper_cli;
mod htpasswd_accounts;
mod identity_attacks;
mod kubelet_plugin;
mod node_identity;
mod oauth2_client;
mod operations;
mod packages;
mod pull_secrets;
mod pull_secrets_deploy;
mod pull_secrets_hostile;
mod pull_secrets_kube_api;
mod pull_secrets_lease;
mod pull_secrets_rbac;
mod pull_secrets_timing;
mod push_pull;
mod refresh_tokens;
mod registry_tokens;
mod secret_logging;
mod signing_options;
mod support;
mod token_api;
mod workload_identity;
