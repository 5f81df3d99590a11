fn main() {
    eprintln!("palisade-control-plane: not built yet");
    std::process::exit(2);
}
