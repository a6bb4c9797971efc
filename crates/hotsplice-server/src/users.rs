//! Dashboard users: local accounts with argon2-hashed passwords and a
//! role, and their sessions (a random cookie whose SHA-256 is the key of a
//! server-side row, with a per-session CSRF token for form posts).

use crate::db::{self, i, s};
use crate::error::{Error, Result};
use crate::fleet::{check_name, Fleet};
use crate::types::Role;
use axum::http::StatusCode;
use hotsplice_fleet::{now, secret_hash};
use serde::Serialize;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "hs_session";
/// A session lasts this long after login.
pub const SESSION_SECS: u64 = 8 * 3600;
/// Longest password accepted (argon2 takes any length; this bounds work).
pub const MAX_PASSWORD: usize = 1024;
pub const MIN_PASSWORD: usize = 8;

/// A user as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub created_at: u64,
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
}

/// A new session: the cookie value (shown once) and its CSRF token.
pub struct NewSession {
    pub cookie: String,
    pub csrf: String,
}

fn internal(m: impl Into<String>) -> Error {
    Error::new(StatusCode::INTERNAL_SERVER_ERROR, m)
}

/// argon2id (the crate's default parameters) with a random salt, as a
/// PHC string.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom")
            .map_err(|e| internal(format!("/dev/urandom: {e}")))?,
        &mut salt,
    )
    .map_err(|e| internal(format!("/dev/urandom: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| internal(format!("salt: {e}")))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| internal(format!("hashing the password: {e}")))?
        .to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(phc) {
        Ok(h) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

pub fn check_password(password: &str) -> Result<()> {
    if password.len() < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(Error::bad(format!(
            "a password has {MIN_PASSWORD} to {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

fn random_hex() -> Result<String> {
    hotsplice_fleet::new_secret().map_err(|e| internal(format!("cannot make a secret: {e}")))
}

impl Fleet {
    /// A new local user (409 if the name is taken).
    pub async fn add_user(&self, name: &str, role: Role, password: &str) -> Result<UserInfo> {
        check_name("user name", name)?;
        check_password(password)?;
        let pw = password.to_string();
        let hash = tokio::task::spawn_blocking(move || hash_password(&pw))
            .await
            .map_err(|e| internal(format!("hashing: {e}")))??;
        let t = now() as i64;
        let n = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&hash)
        .bind(role.as_str())
        .bind(t)
        .execute(&self.db.write)
        .await
        .map_err(db::DbError::from)?
        .rows_affected();
        if n == 0 {
            return Err(Error::new(
                StatusCode::CONFLICT,
                format!("a user {name} exists already"),
            ));
        }
        Ok(UserInfo {
            name: name.into(),
            role,
            created_at: t as u64,
        })
    }

    pub async fn users(&self) -> Result<Vec<UserInfo>> {
        let rows = sqlx::query("SELECT name, role, created_at FROM users ORDER BY name")
            .fetch_all(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        rows.iter()
            .map(|r| {
                Ok(UserInfo {
                    name: s(r, "name")?,
                    role: Role::parse(&s(r, "role")?).unwrap_or(Role::ReadOnly),
                    created_at: i(r, "created_at")? as u64,
                })
            })
            .collect()
    }

    /// Check a user's password and open a session; 401 for an unknown
    /// user or a wrong password (the same message, the same work).
    pub async fn login(&self, name: &str, password: &str) -> Result<(NewSession, Role)> {
        let bad = || Error::unauthorized("unknown user or wrong password");
        if name.len() > 128 || password.len() > MAX_PASSWORD {
            return Err(bad());
        }
        let row = sqlx::query("SELECT password_hash, role FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.db.read)
            .await
            .map_err(db::DbError::from)?;
        let (hash, role) = match &row {
            Some(r) => (s(r, "password_hash")?, s(r, "role")?),
            // A well-formed hash nobody's password matches: same work.
            None => (
                "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_string(),
                String::new(),
            ),
        };
        let pw = password.to_string();
        let ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash))
            .await
            .map_err(|e| internal(format!("verifying: {e}")))?;
        let role = match (ok, row.is_some(), Role::parse(&role)) {
            (true, true, Some(r)) => r,
            _ => return Err(bad()),
        };
        let cookie = random_hex()?;
        let csrf = random_hex()?;
        let t = now() as i64;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_name, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(secret_hash(&cookie))
        .bind(name)
        .bind(&csrf)
        .bind(t)
        .bind(t + SESSION_SECS as i64)
        .execute(&self.db.write)
        .await
        .map_err(db::DbError::from)?;
        Ok((NewSession { cookie, csrf }, role))
    }

    /// The session of a cookie value, if it is live (and its user still
    /// exists: the role is the user's current one).
    pub async fn session(&self, cookie: &str) -> Result<Option<Session>> {
        if cookie.is_empty() || cookie.len() > 128 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT s.user_name, s.csrf, u.role FROM sessions s JOIN users u ON u.name = s.user_name WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(secret_hash(cookie))
        .bind(now() as i64)
        .fetch_optional(&self.db.read)
        .await
        .map_err(db::DbError::from)?;
        let Some(r) = row else { return Ok(None) };
        Ok(Role::parse(&s(&r, "role")?).map(|role| Session {
            user: s(&r, "user_name").unwrap_or_default(),
            role,
            csrf: s(&r, "csrf").unwrap_or_default(),
        }))
    }

    pub async fn logout(&self, cookie: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1 OR expires_at <= $2")
            .bind(secret_hash(cookie))
            .bind(now() as i64)
            .execute(&self.db.write)
            .await
            .map_err(db::DbError::from)?;
        Ok(())
    }
}
