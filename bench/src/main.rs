fn main() {
    eprintln!("palisade-bench: not built yet");
    std::process::exit(2);
}
