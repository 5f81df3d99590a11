fn main() {
    eprintln!("palisade-proxy: not built yet");
    std::process::exit(2);
}
