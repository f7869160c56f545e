//! Membership is replicated, signed state: a device learns who belongs to a share from the
//! share's own records, so a removal made on one device is enforced by every other.

mod common;

use std::time::Duration;

use common::{daemon, free_port, ok, run, stop, wait_until};

const T: Duration = Duration::from_secs(30);

#[test]
fn members_added_and_removed_on_one_device_are_enforced_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let home = |n: &str| dir.path().join(format!("home-{n}"));
    let folder = |n: &str| dir.path().join(format!("folder-{n}"));
    let (laptop, phone, tablet) = (home("laptop"), home("phone"), home("tablet"));
    std::fs::create_dir(folder("laptop")).unwrap();
    std::fs::write(folder("laptop").join("a.txt"), b"shared\n").unwrap();
    for (h, name) in [(&laptop, "laptop"), (&phone, "phone"), (&tablet, "tablet")] {
        ok(h, &["init", "--name", name]);
    }
    let fl = folder("laptop");
    ok(&laptop, &["share", fl.to_str().unwrap()]);
    let port_l = free_port();
    let at_laptop = format!("127.0.0.1:{port_l}");
    let laptop_d = daemon(&laptop, port_l, &["--rescan", "1"]);
    for (h, n) in [(&phone, "phone"), (&tablet, "tablet")] {
        let code = ok(&laptop, &["invite", fl.to_str().unwrap()])
            .trim()
            .to_owned();
        ok(
            h,
            &[
                "join",
                &code,
                folder(n).to_str().unwrap(),
                "--peer",
                &at_laptop,
            ],
        );
    }
    // The tablet runs and syncs with the laptop only: it learns of the phone from the
    // laptop's membership record, never from pairing with it.
    let port_t = free_port();
    let at_tablet = format!("127.0.0.1:{port_t}");
    let tablet_d = daemon(&tablet, port_t, &["--rescan", "1", "--peer", &at_laptop]);
    let phone_id = ok(&phone, &["id"]).trim().to_owned();
    wait_until(T, "the tablet to list the phone as a member", || {
        ok(&tablet, &["status", "--json"]).contains(&phone_id)
    });
    // So the phone can check in with the tablet directly.
    ok(
        &phone,
        &["sync", "--once", "--peer", &at_tablet, "--timeout", "30"],
    );
    assert!(folder("phone").join("a.txt").exists());

    // The laptop removes the phone; the tablet hears of it from the laptop and refuses the
    // phone from then on.
    ok(&laptop, &["remove-member", fl.to_str().unwrap(), &phone_id]);
    wait_until(T, "the tablet to drop the phone", || {
        !ok(&tablet, &["status", "--json"]).contains(&phone_id)
    });
    let out = run(
        &phone,
        &["sync", "--once", "--peer", &at_tablet, "--timeout", "15"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "{err}");
    stop(tablet_d);
    stop(laptop_d);
}
