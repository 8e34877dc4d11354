//! Rebuilds the crate when a migration or a post-deployment step is added: `sqlx::migrate!`
//! embeds the directories' files, and cargo does not otherwise notice a new file there.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=post-deploy");
}
