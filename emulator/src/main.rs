//! azure-emulator: a local stand-in for the parts of Azure that entra-operator talks to.

fn main() {
    eprintln!("azure-emulator: not built yet (see the emulator issue); nothing to serve");
    std::process::exit(2);
}
