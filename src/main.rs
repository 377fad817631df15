fn main() {
    println!("zaya {} ({})", env!("CARGO_PKG_VERSION"), zaya_mlx::ext::version());
}
