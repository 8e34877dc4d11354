//! The one error type of the store.

/// What can go wrong talking to PostgreSQL or Redis through the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query failed.
    #[error("database query failed")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A post-deployment step would remove what a replica of an older release still uses.
    #[error(
        "replicas of an older release are still connected: {replicas}; the post-deployment steps run once every \
         replica runs this release"
    )]
    OlderReplicas {
        /// The replicas, by session name.
        replicas: String,
    },
    /// A Redis command failed.
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    /// A batch of registry writes that cannot be applied as given (too many, a name twice).
    #[error("{0}")]
    Batch(String),
    /// A registry write was refused (not found, a clash, a target someone else owns).
    #[error(transparent)]
    Refused(#[from] crate::registry::Refused),
}
