//! What kube's finalizer helper ([`kube::runtime::finalizer()`]) returns, as a controller's own
//! error: shared by the IPPool and NodeNetwork controllers, whose errors say the same things
//! with their own kind and RBAC hint.

use kube::runtime::finalizer;

/// A controller error that can say a finalizer write failed or the helper refused an object.
pub(crate) trait FinalizerError: std::error::Error + Sized + 'static {
    /// Adding (`verb` is `add`) or removing (`remove`) the finalizer of `name` failed.
    fn finalizer(verb: &'static str, name: &str, source: kube::Error) -> Self;
    /// The helper refused `name` (it has no name, or the finalizer is invalid): `what` says why.
    fn unexpected(name: &str, what: String) -> Self;
}

/// The controller's error for what the helper returned about `name`: its own errors from
/// apply and cleanup as they are, the helper's mapped onto the controller's variants.
pub(crate) fn into_error<E: FinalizerError>(name: &str, error: finalizer::Error<E>) -> E {
    match error {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(source) => E::finalizer("add", name, source),
        finalizer::Error::RemoveFinalizer(source) => E::finalizer("remove", name, source),
        other @ (finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer) => {
            E::unexpected(name, other.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error, PartialEq)]
    enum Error {
        #[error("own")]
        Own,
        #[error("{0} {1}")]
        Finalizer(&'static str, String),
        #[error("{0}: {1}")]
        Unexpected(String, String),
    }

    impl FinalizerError for Error {
        fn finalizer(verb: &'static str, name: &str, _: kube::Error) -> Self {
            Self::Finalizer(verb, name.to_owned())
        }
        fn unexpected(name: &str, what: String) -> Self {
            Self::Unexpected(name.to_owned(), what)
        }
    }

    fn gone() -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("gone", "NotFound").with_code(404),
        ))
    }

    #[test]
    fn the_helpers_errors_become_the_controllers_own() {
        assert_eq!(
            into_error("p", finalizer::Error::ApplyFailed(Error::Own)),
            Error::Own
        );
        assert_eq!(
            into_error("p", finalizer::Error::CleanupFailed(Error::Own)),
            Error::Own
        );
        assert_eq!(
            into_error::<Error>("p", finalizer::Error::AddFinalizer(gone())),
            Error::Finalizer("add", "p".into())
        );
        assert_eq!(
            into_error::<Error>("p", finalizer::Error::RemoveFinalizer(gone())),
            Error::Finalizer("remove", "p".into())
        );
        assert!(matches!(
            into_error::<Error>("p", finalizer::Error::UnnamedObject),
            Error::Unexpected(name, _) if name == "p"
        ));
    }
}
