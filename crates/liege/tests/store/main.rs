fn main() {}
mod postgres;
