//! Unit tests of users, tokens, credentials and the failure limiter.

#![allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.

use super::*;

fn bearer(token: &str) -> Credential {
    Credential::Bearer(token.to_owned())
}

#[test]
fn first_start_writes_an_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let (users, first) = Users::open(dir.path(), 1).unwrap();
    let path = dir.path().join(ADMIN_TOKEN_FILE);
    assert_eq!(first, FirstStart::AdminTokenWritten(path.clone()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    assert!(token.trim().starts_with(TOKEN_PREFIX));
    let who = users
        .authenticate(&bearer(&token))
        .expect("the admin token works");
    assert_eq!(who.user.as_deref(), Some(FIRST_ADMIN));
    assert_eq!(who.role, Role::Admin);
    // The token itself is nowhere in the users file.
    let stored = std::fs::read_to_string(dir.path().join(USERS_FILE)).unwrap();
    assert!(!stored.contains(token.trim()));
    // A second start keeps the admin and writes no new token.
    let (again, first) = Users::open(dir.path(), 2).unwrap();
    assert_eq!(first, FirstStart::Existing);
    assert!(again.authenticate(&bearer(&token)).is_some());
}

#[test]
fn tokens_rotate_and_removed_users_stop_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (users, _) = Users::open(dir.path(), 1).unwrap();
    let t1 = users
        .add("alice", Role::Writer, Some(vec!["situation".into()]), 5)
        .unwrap();
    let alice = users.authenticate(&bearer(&t1)).unwrap();
    assert!(alice.may_write("situation"));
    assert!(!alice.may_write("documents"));
    assert!(!alice.may_write("_policy"));
    assert_eq!(alice.author("hefei"), "alice@hefei");
    let (t2, role) = users.rotate("alice", 6).unwrap();
    assert_eq!(role, Role::Writer);
    assert_ne!(t1, t2);
    assert!(
        users.authenticate(&bearer(&t1)).is_none(),
        "old token still works"
    );
    assert!(users.authenticate(&bearer(&t2)).is_some());
    // A reopened node agrees (the change was written through).
    let (reopened, _) = Users::open(dir.path(), 7).unwrap();
    assert!(reopened.authenticate(&bearer(&t1)).is_none());
    assert!(reopened.authenticate(&bearer(&t2)).is_some());
    users.remove("alice").unwrap();
    assert!(users.authenticate(&bearer(&t2)).is_none());
    assert!(matches!(
        users.remove("alice"),
        Err(AuthError::NoSuchUser(_))
    ));
}

#[test]
fn basic_credentials_must_name_the_tokens_user() {
    let dir = tempfile::tempdir().unwrap();
    let (users, _) = Users::open(dir.path(), 1).unwrap();
    let token = users.add("bob", Role::Reader, None, 1).unwrap();
    let basic = |user: &str, token: &str| {
        let raw = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"));
        Credential::parse(&format!("Basic {raw}")).unwrap()
    };
    assert!(users.authenticate(&basic("bob", &token)).is_some());
    assert!(users.authenticate(&basic("admin", &token)).is_none());
    assert!(users.authenticate(&basic("bob", "ost_nope")).is_none());
    assert_eq!(
        Credential::parse(&format!("bearer  {token} ")),
        Some(bearer(&token))
    );
    assert_eq!(Credential::parse("Bearer "), None);
    assert_eq!(Credential::parse("Digest x"), None);
    assert_eq!(Credential::parse("Basic !!!"), None);
}

#[test]
fn names_roles_and_limits_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (users, _) = Users::open(dir.path(), 1).unwrap();
    for bad in ["", "Alice", "a@b", "a:b", "-x", &"x".repeat(65)] {
        assert!(matches!(
            users.add(bad, Role::Reader, None, 1),
            Err(AuthError::BadName(_))
        ));
    }
    assert!(matches!(
        users.add("c", Role::Reader, Some(vec!["bad name".into()]), 1),
        Err(AuthError::BadCollection(_))
    ));
    assert!(matches!(parse_role("root"), Err(AuthError::BadRole(_))));
    users.add("c", Role::Reader, None, 1).unwrap();
    assert!(matches!(
        users.add("c", Role::Reader, None, 1),
        Err(AuthError::Exists(_))
    ));
    assert!(matches!(
        users.remove(FIRST_ADMIN),
        Err(AuthError::LastAdmin(_))
    ));
    let names: Vec<_> = users.list().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["admin", "c"]);
}

#[test]
fn a_damaged_users_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Users::open(dir.path(), 1).unwrap();
    std::fs::write(dir.path().join(USERS_FILE), b"{\"format\":1,\"users\":[").unwrap();
    let err = Users::open(dir.path(), 2).unwrap_err();
    assert!(err.to_string().contains("damaged users file"), "{err}");
}

#[test]
fn readers_read_their_collections_only() {
    let p = Principal {
        user: Some("r".into()),
        role: Role::Reader,
        collections: Some(vec!["situation".into()]),
        token_issued_ms: Some(1),
    };
    assert!(p.may_read("situation"));
    assert!(!p.may_read("documents"));
    assert!(!p.may_write("situation"));
    let admin = Principal::anonymous_admin();
    assert!(admin.may_write("_policy"));
    assert_eq!(admin.author("gov"), "gov");
}

#[test]
fn repeated_failures_are_slowed_per_address() {
    let limiter = FailureLimiter::new();
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let b: IpAddr = "127.0.0.2".parse().unwrap();
    for i in 0..MAX_FAILURES {
        assert_eq!(limiter.check(a, 1000 + u64::from(i)), Ok(()));
        limiter.failed(a, 1000 + u64::from(i));
    }
    let wait = limiter.check(a, 2000).unwrap_err();
    assert!((58..=60).contains(&wait), "{wait}");
    assert_eq!(
        limiter.check(b, 2000),
        Ok(()),
        "another address is not slowed"
    );
    assert_eq!(
        limiter.check(a, 1000 + FAILURE_WINDOW_MS),
        Ok(()),
        "the window passes"
    );
    limiter.failed(a, 1000 + FAILURE_WINDOW_MS);
    assert_eq!(limiter.check(a, 1001 + FAILURE_WINDOW_MS), Ok(()));
    limiter.succeeded(a);
    assert_eq!(limiter.check(a, 1002 + FAILURE_WINDOW_MS), Ok(()));
}
