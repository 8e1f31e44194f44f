fn main() {
    println!("docker-credential-regauth {}", env!("CARGO_PKG_VERSION"));
}
