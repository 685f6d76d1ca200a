//! Test images pushed into a [`LocalRegistry`] with podman (as root, in a throw-away
//! store): a two-layer busybox image whose second layer deletes a file and sets the
//! config, a linux/amd64 + linux/arm64 index, and a large one-layer image. Each helper
//! returns the reference it pushed and the manifest digest podman reports.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{test_ca, LocalRegistry};
use crate::process::run_with_timeout;
use crate::tempdir::TempDir;

/// The file in every test image that holds the marker the image was pushed with.
pub const MARKER_FILE: &str = "/etc/ferry-marker";
/// In the first layer and kept: content `keep\n`.
pub const KEPT_FILE: &str = "/data/keep";
/// In the first layer, deleted by the second (a whiteout): absent from the image.
pub const WHITED_OUT_FILE: &str = "/data/gone";
/// Added by the second layer: content `second\n`.
pub const SECOND_LAYER_FILE: &str = "/data/layer2";
/// In the large image: the random bytes.
pub const RANDOM_FILE: &str = "/data/random";
/// The config of the two-layer and large images.
pub const IMAGE_ENV: [&str; 2] = ["PATH=/bin", "FERRY_TEST_GREETING=hello from the registry"];
pub const IMAGE_WORKDIR: &str = "/data";
pub const IMAGE_ENTRYPOINT: [&str; 2] = ["/bin/sh", "-c"];
pub const IMAGE_CMD: [&str; 1] = ["cat /etc/ferry-marker"];

/// What podman writes to the registry: OCI media types or Docker's schema 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    Oci,
    Docker,
}

impl ManifestFormat {
    fn podman_name(self) -> &'static str {
        match self {
            ManifestFormat::Oci => "oci",
            ManifestFormat::Docker => "v2s2",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `127.0.0.1:PORT/NAME:TAG`.
    pub reference: String,
    /// `sha256:HEX` of the manifest (or index) as pushed.
    pub digest: String,
}

impl PushedImage {
    /// `127.0.0.1:PORT/NAME@sha256:HEX`.
    pub fn by_digest(&self) -> String {
        // The tag is after the last colon of the last path part (the port has one too).
        let last_part = self.reference.rfind('/').map_or(0, |i| i + 1);
        let name = match self.reference[last_part..].rfind(':') {
            Some(colon) => &self.reference[..last_part + colon],
            None => &self.reference,
        };
        format!("{name}@{}", self.digest)
    }
}

/// The multi-platform image: the index and the image manifest of each platform.
#[derive(Clone, Debug)]
pub struct PlatformIndex {
    pub index: PushedImage,
    /// The manifest digests the index lists for linux/amd64 and linux/arm64. Their
    /// marker files say `linux/amd64` and `linux/arm64`.
    pub amd64_digest: String,
    pub arm64_digest: String,
}

/// Makes a busybox root with the marker and the first layer's files, imports it as
/// ferry-test/base, and (TWO_LAYERS=1) commits a second layer on top as ferry-test/image.
const BUILD_RECIPE: &str = r#"
build() { # ARCH MARKER TAG
    local root=$WORK/root-$1
    mkdir -p "$root/bin" "$root/etc" "$root/data"
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    printf '%s\n' "$2" > "$root/etc/ferry-marker"
    echo keep > "$root/data/keep"
    echo gone > "$root/data/gone"
    if [ "${RANDOM_MB:-0}" -gt 0 ]; then
        head -c "$((RANDOM_MB * 1024 * 1024))" /dev/urandom > "$root/data/random"
    fi
    tar -C "$root" -cf "$WORK/layer-$1.tar" .
    rm -rf "$root"
    if [ "${TWO_LAYERS:-1}" = 1 ]; then
        $P import -q --arch "$1" --os linux "$WORK/layer-$1.tar" "ferry-test/base-$1" >/dev/null
        local c m
        c=$($P create --arch "$1" --unsetenv-all --http-proxy=false "ferry-test/base-$1" /bin/sh)
        m=$($P mount "$c")
        rm "$m/data/gone"
        echo second > "$m/data/layer2"
        $P umount "$c" >/dev/null
        $P commit -q "${CHANGES[@]}" "$c" "$3" >/dev/null
        $P rm -f "$c" >/dev/null
    else
        $P import -q --arch "$1" --os linux "${CHANGES[@]}" "$WORK/layer-$1.tar" "$3" >/dev/null
    fi
    rm "$WORK/layer-$1.tar"
}
"#;

impl LocalRegistry {
    /// Pushes the two-layer image to `name_tag` (`repo/name:tag`): busybox with
    /// [`MARKER_FILE`] holding `marker`, [`KEPT_FILE`], [`SECOND_LAYER_FILE`], no
    /// [`WHITED_OUT_FILE`], and [`IMAGE_ENV`], [`IMAGE_WORKDIR`], [`IMAGE_ENTRYPOINT`],
    /// [`IMAGE_CMD`].
    pub fn push_two_layer(
        &self,
        name_tag: &str,
        marker: &str,
        format: ManifestFormat,
    ) -> PushedImage {
        let reference = self.reference(name_tag);
        let script = format!(
            "build amd64 \"$MARKER\" ferry-test/image\n\
             $P push -q --format {} \"${{PUSH_ARGS[@]}}\" --digestfile \"$WORK/digest\" \
             ferry-test/image \"docker://$REFERENCE\"\n",
            format.podman_name()
        );
        let digest = self.run_podman(&script, &[("MARKER", marker), ("REFERENCE", &reference)]);
        PushedImage { reference, digest }
    }

    /// Pushes an index of two two-layer images to `name_tag`, for linux/amd64 and
    /// linux/arm64, whose marker files name their platform.
    pub fn push_multi_platform(&self, name_tag: &str, format: ManifestFormat) -> PlatformIndex {
        let reference = self.reference(name_tag);
        let script = format!(
            "build amd64 linux/amd64 ferry-test/amd64\n\
             build arm64 linux/arm64 ferry-test/arm64\n\
             $P manifest create ferry-test/list >/dev/null\n\
             $P manifest add --arch amd64 --os linux ferry-test/list containers-storage:localhost/ferry-test/amd64 >/dev/null\n\
             $P manifest add --arch arm64 --os linux ferry-test/list containers-storage:localhost/ferry-test/arm64 >/dev/null\n\
             $P manifest push -q --all --format {} \"${{PUSH_ARGS[@]}}\" --digestfile \"$WORK/digest\" \
             ferry-test/list \"docker://$REFERENCE\"\n\
             $P manifest rm ferry-test/list >/dev/null\n",
            format.podman_name()
        );
        let digest = self.run_podman(&script, &[("REFERENCE", &reference)]);
        let (repository, tag) = name_tag.rsplit_once(':').expect("NAME:TAG");
        let index = self.get_manifest(repository, tag);
        assert_eq!(index.status, 200, "the index {reference}: {}", index.text());
        let platform_digest = |arch: &str| {
            let entries = index.json()["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let entry = entries
                .iter()
                .find(|m| m["platform"]["architecture"] == arch && m["platform"]["os"] == "linux");
            entry
                .and_then(|m| m["digest"].as_str())
                .unwrap_or_else(|| panic!("no linux/{arch} in the index: {}", index.text()))
                .to_string()
        };
        PlatformIndex {
            amd64_digest: platform_digest("amd64"),
            arm64_digest: platform_digest("arm64"),
            index: PushedImage { reference, digest },
        }
    }

    /// Pushes a one-layer image with [`RANDOM_FILE`] of `megabytes` MiB of random data
    /// (which gzip cannot shrink) besides busybox and the marker: for benchmarks.
    pub fn push_large(
        &self,
        name_tag: &str,
        megabytes: usize,
        format: ManifestFormat,
    ) -> PushedImage {
        let reference = self.reference(name_tag);
        let script = format!(
            "TWO_LAYERS=0 RANDOM_MB={megabytes} build amd64 large ferry-test/large\n\
             $P push -q --format {} \"${{PUSH_ARGS[@]}}\" --digestfile \"$WORK/digest\" \
             ferry-test/large \"docker://$REFERENCE\"\n",
            format.podman_name()
        );
        let digest = self.run_podman(&script, &[("REFERENCE", &reference)]);
        PushedImage { reference, digest }
    }

    /// Runs `script` after [`BUILD_RECIPE`] in a fresh podman store, with `P` (podman on
    /// that store), `PUSH_ARGS` (TLS and login for this registry), `CHANGES` (the image
    /// config), `BUSYBOX` and `vars`; returns the digest the script left in $WORK/digest.
    fn run_podman(&self, script: &str, vars: &[(&str, &str)]) -> String {
        let work = TempDir::new_in(Path::new("/var/tmp"), "podman-push");
        let tls_arg = if self.kind().is_tls() {
            format!("--cert-dir={}", test_ca().cert_dir.display())
        } else {
            "--tls-verify=false".to_string()
        };
        let changes = [
            format!("ENV {}", IMAGE_ENV[0]),
            format!("ENV {}", IMAGE_ENV[1]),
            format!("WORKDIR {IMAGE_WORKDIR}"),
            format!("ENTRYPOINT {}", json_array(&IMAGE_ENTRYPOINT)),
            format!("CMD {}", json_array(&IMAGE_CMD)),
        ];
        let full = format!(
            "set -euo pipefail\n\
             P=\"podman --root $WORK/store --runroot $WORK/run --storage-driver vfs\"\n\
             PUSH_ARGS=({tls_arg})\n\
             if [ -n \"${{CREDS:-}}\" ]; then PUSH_ARGS+=(--creds \"$CREDS\"); fi\n\
             CHANGES=()\n\
             {}\n\
             {BUILD_RECIPE}\n\
             {script}\n\
             $P rmi -a -f >/dev/null\n",
            changes
                .iter()
                .map(|c| format!("CHANGES+=(--change {})", shell_quote(c)))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let mut bash = Command::new("bash");
        bash.args(["-c", &full])
            .env("WORK", work.path())
            .env("BUSYBOX", crate::fixture::BUSYBOX)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env(
                "CREDS",
                self.credentials()
                    .map(|c| c.user_colon_password())
                    .unwrap_or_default(),
            );
        for (name, value) in vars {
            bash.env(name, value);
        }
        let out = run_with_timeout(bash, Duration::from_secs(600));
        assert_eq!(
            out.code,
            Some(0),
            "pushing a test image with podman: {out:#?}\nregistry log:\n{}",
            self.log()
        );
        let digest = std::fs::read_to_string(work.join("digest")).expect("podman's digest file");
        assert!(digest.starts_with("sha256:"), "podman's digest: {digest:?}");
        digest.trim().to_string()
    }
}

/// `["a", "b"]`, as Dockerfile instructions take an exec form.
fn json_array(items: &[&str]) -> String {
    serde_json::to_string(items).unwrap()
}

/// `'...'` for bash, with embedded single quotes closed and escaped.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
