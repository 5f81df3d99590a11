fn main() {
    eprintln!("palisadectl: not built yet");
    std::process::exit(2);
}
