//! The helper's `kubelet` stdin: a `CredentialProviderRequest` (v1,
//! v1beta1, v1alpha1), its image and its service-account token's claims.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        docker_credential_regauth::fuzzing::kubelet_request(data);
    });
}
