//! A conversation on disk: the JSON transcript that `/save` writes and
//! `/load` and `greve chat --load` read.
//!
//! ```json
//! {"format": "greve-transcript", "version": 1, "system": "…", "persona": "râleuse",
//!  "messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]}
//! ```
//!
//! `system` and `persona` may be null. Files are written atomically (a
//! temporary file in the same folder, renamed over the target), so an
//! interrupted save never leaves half a transcript.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::exit::{Classify, Failure};
use crate::persona::Mode;
use crate::template::Message;

const FORMAT: &str = "greve-transcript";
const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// The user's system prompt (the persona's is not repeated here).
    pub system: Option<String>,
    /// The strike mode, or null when off.
    pub persona: Option<Mode>,
    pub messages: Vec<Message>,
}

#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    version: u32,
    #[serde(flatten)]
    transcript: Transcript,
}

impl Transcript {
    /// The strike mode the conversation was saved with.
    pub fn mode(&self) -> Mode {
        self.persona.unwrap_or(Mode::Off)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        // Far above a lifetime of chat; what is loaded is held in memory.
        let text = crate::text_file::read_user(path, "the transcript", 256 << 20)?;
        Self::parse(&text, path)
    }

    /// A transcript from the text of the file at `path` (named in errors).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let file: File = serde_json::from_str(text).classify(Failure::Usage, || {
            format!("{} is not a greve transcript", path.display())
        })?;
        if file.format != FORMAT || file.version != VERSION {
            return Err(Failure::Usage.err(format!(
                "{} is a {} file of version {}; greve reads {FORMAT:?} version {VERSION}",
                path.display(),
                crate::messages::short(&file.format),
                file.version
            )));
        }
        let t = file.transcript;
        // The last message may be either the user's or the assistant's.
        crate::template::check_turns(&t.messages)
            .classify(Failure::Usage, || path.display().to_string())?;
        Ok(t)
    }

    /// Writes the transcript atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let file = File {
            format: FORMAT.into(),
            version: VERSION,
            transcript: self.clone(),
        };
        let json = serde_json::to_string_pretty(&file)?;
        let fail = || format!("cannot save the transcript to {}", path.display());
        // A link is followed, not replaced by a file; a file keeps its
        // permissions, and a new one gets the umask's, not the temporary
        // file's 0600.
        let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let folder = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !folder.is_dir() {
            return Err(Failure::Usage.err(format!(
                "{}: there is no folder {}",
                fail(),
                folder.display()
            )));
        }
        let mut builder = tempfile::Builder::new();
        match std::fs::metadata(&target) {
            Ok(existing) => builder.permissions(existing.permissions()),
            #[cfg(unix)]
            Err(_) => {
                use std::os::unix::fs::PermissionsExt;
                // Less the umask, at creation.
                builder.permissions(std::fs::Permissions::from_mode(0o666))
            }
            #[cfg(not(unix))]
            Err(_) => &mut builder,
        };
        let mut tmp = builder
            .tempfile_in(folder)
            // Its error names the temporary file, which the user never sees.
            .map_err(|e| std::io::Error::from(e.kind()))
            .classify(Failure::Usage, || {
                format!("{}: in {}", fail(), folder.display())
            })?;
        tmp.write_all(json.as_bytes())
            .classify(Failure::Usage, fail)?;
        tmp.write_all(b"\n").classify(Failure::Usage, fail)?;
        tmp.as_file().sync_all().classify(Failure::Usage, fail)?;
        tmp.persist(&target)
            .map_err(|e| e.error)
            .classify(Failure::Usage, fail)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.json");
        let t = Transcript {
            system: Some("Sois bref.".into()),
            persona: Some(Mode::Raleuse),
            messages: vec![Message::user("Salut"), Message::assistant("Quoi encore ?")],
        };
        t.save(&path).unwrap();
        assert_eq!(Transcript::load(&path).unwrap(), t);
        let shorter = Transcript::default();
        shorter.save(&path).unwrap();
        assert_eq!(Transcript::load(&path).unwrap(), shorter);
        // Nothing but the transcript is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_save_keeps_links_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        Transcript::default().save(&real).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_ne!(
            mode(&real),
            0o600,
            "a new file gets the umask's permissions"
        );
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let t = Transcript {
            messages: vec![Message::user("Salut")],
            ..Transcript::default()
        };
        t.save(&link).unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(Transcript::load(&real).unwrap(), t);
        assert_eq!(mode(&real), 0o640);

        let err = t.save(&dir.path().join("no/such/file.json")).unwrap_err();
        let folder = format!("there is no folder {}/no/such", dir.path().display());
        assert!(format!("{err:#}").ends_with(&folder), "{err:#}");
    }

    #[test]
    fn bad_files_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{\"messages\": 3}").unwrap();
        assert!(format!("{}", Transcript::load(&path).unwrap_err()).contains("bad.json"));
        std::fs::write(
            &path,
            r#"{"format": "greve-transcript", "version": 1, "system": null, "persona": null,
                "messages": [{"role": "assistant", "content": "x"}]}"#,
        )
        .unwrap();
        assert!(format!("{:#}", Transcript::load(&path).unwrap_err()).contains("alternate"));
        assert!(Transcript::load(&dir.path().join("missing.json")).is_err());
        std::fs::write(
            &path,
            r#"{"format": "greve-transcript", "version": 1, "system": null, "persona": "lundi",
                "messages": []}"#,
        )
        .unwrap();
        let e = format!("{:#}", Transcript::load(&path).unwrap_err());
        assert!(e.contains("\"lundi\" is not a strike mode"), "{e}");
        // Every mode's name reads back as that mode.
        for mode in [Mode::Off, Mode::Raleuse, Mode::Totale, Mode::Perlee] {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(serde_json::from_str::<Mode>(&json).unwrap(), mode);
        }
    }
}
