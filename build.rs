// `sqlx::migrate!` embeds `migrations/` when the crate compiles: a new or changed migration
// must make cargo compile it again, which it does not notice on its own.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
