//! Errors as the API answers them: a status and a JSON
//! [`hotsplice_fleet::api::ApiError`] body naming what is wrong.

use crate::db::DbError;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(StatusCode::FORBIDDEN, message)
    }
    pub fn no_machine(uuid: &str) -> Error {
        Error::not_found(format!("no machine with UUID {uuid}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = hotsplice_fleet::api::ApiError {
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Error {
        match e {
            DbError::Conflict(m) => Error::new(StatusCode::CONFLICT, m),
            DbError::Sql(sqlx::Error::PoolTimedOut) => {
                tracing::warn!("database pool timed out");
                Error::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server's database is busy; retry later",
                )
            }
            other => {
                tracing::error!("{other}");
                Error::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server's database failed; see the server's log",
                )
            }
        }
    }
}

impl From<BytesRejection> for Error {
    fn from(r: BytesRejection) -> Error {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body too large".to_string()
        } else {
            format!("cannot read the request body: {}", r.body_text())
        };
        Error::new(status, message)
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Error {
        Error::bad(format!("bad path parameter: {}", r.body_text()))
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Error {
        Error::bad(format!("bad query string: {}", r.body_text()))
    }
}
