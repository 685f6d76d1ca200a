//! The unprivileged user the tests run commands as, as the host sees them
//! (tests/prepare-host creates them).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::OnceLock;

pub const TEST_USER: &str = "ferrytest";
pub const TEST_GROUP: &str = "ferrylab";
pub const TEST_HOME: &str = "/home/ferrytest";

pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// All groups (primary included), as (gid, name).
    pub groups: Vec<(u32, String)>,
}

impl TestUser {
    /// The ids of all their groups, as `id -G` lists them.
    pub fn gids(&self) -> BTreeSet<u32> {
        self.groups.iter().map(|(gid, _)| *gid).collect()
    }
}

/// The test user, looked up once per test process.
pub fn test_user() -> &'static TestUser {
    static USER: OnceLock<TestUser> = OnceLock::new();
    USER.get_or_init(|| {
        let user = nix::unistd::User::from_name(TEST_USER)
            .unwrap()
            .expect("the test user exists");
        TestUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            groups: test_user_groups(),
        }
    })
}

/// The test user's groups as (gid, name); none when the user does not exist.
pub fn test_user_groups() -> Vec<(u32, String)> {
    let Ok(Some(user)) = nix::unistd::User::from_name(TEST_USER) else {
        return vec![];
    };
    let name = CString::new(TEST_USER).unwrap();
    nix::unistd::getgrouplist(&name, user.gid)
        .unwrap_or_default()
        .into_iter()
        .map(|g| {
            let name = nix::unistd::Group::from_gid(g)
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_default();
            (g.as_raw(), name)
        })
        .collect()
}
