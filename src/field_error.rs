//! An error in one field of a request (the sampler's steps, an image count, a class), named as
//! the CLI's flag (`--field`) and the page's control are named, so neither has to guess the
//! field from the message.

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}
