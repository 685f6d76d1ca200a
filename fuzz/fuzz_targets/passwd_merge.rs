//! The image's /etc/passwd and /etc/group: read by root from an untrusted image and
//! merged with the user's entry.
#![no_main]
use ferry_runtime::users::{merge_group, merge_passwd, Group, User};
use libfuzzer_sys::fuzz_target;

fn uid_field(line: &str, n: usize) -> Option<u32> {
    line.split(':').nth(n).and_then(|u| u.parse().ok())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let user = User {
        name: "alice".into(),
        uid: 1000,
        gid: 1000,
        groups: vec![Group {
            gid: 27,
            name: "sudo".into(),
        }],
        home: "/home/alice".into(),
        gecos: String::new(),
    };
    // The user's uid and every group of theirs resolve afterwards.
    let passwd = merge_passwd(&text, &user);
    assert!(passwd.lines().any(|l| uid_field(l, 2) == Some(1000)), "{passwd:?}");
    let group = merge_group(&text, &user);
    for gid in [1000, 27] {
        assert!(group.lines().any(|l| uid_field(l, 2) == Some(gid)), "{group:?}");
    }
});
