//! The strike persona ("grève illimitée"): which mode is on, the system
//! prompt it adds, the letterhead and sign-off around a grumpy reply, and the
//! strike notice that replaces the reply altogether.
//!
//! Pure functions over the texts of `prompts/` (embedded at build time,
//! overridable file by file from a folder) and a seed, so that the same seed
//! gives the same letterhead, sign-off and demands. Printing is the front
//! ends' job.

use std::path::Path;
use std::str::FromStr;

use crate::exit::Failure;

/// How much the model is on strike, after French strike practice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A normal assistant.
    Off,
    /// Grumbles in character, but answers.
    Raleuse,
    /// "Grève illimitée": every request gets the strike notice, no inference.
    Totale,
    /// "Grève perlée": some requests get the notice, the others a grumpy
    /// answer, decided by the seed.
    Perlee,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_lowercase().as_str() {
            "off" | "non" | "no" | "0" | "false" => Ok(Mode::Off),
            "" | "on" | "oui" | "yes" | "1" | "true" | "râleuse" | "raleuse" => Ok(Mode::Raleuse),
            "totale" | "total" | "illimitée" | "illimitee" => Ok(Mode::Totale),
            "perlée" | "perlee" => Ok(Mode::Perlee),
            other => Err(format!(
                "{} is not a strike mode: use râleuse (raleuse), totale (total), perlée (perlee) or off",
                crate::messages::short(other)
            )),
        }
    }
}

/// As its name, in transcripts and the config file.
impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Raleuse => "râleuse",
            Mode::Totale => "totale",
            Mode::Perlee => "perlée",
        }
    }

    /// Whether this request gets the notice instead of an answer. In
    /// `perlée` mode one request in three does, chosen by the seed.
    pub fn strikes(self, seed: u64) -> bool {
        match self {
            Mode::Totale => true,
            Mode::Perlee => mix(seed, 0x5EED).is_multiple_of(3),
            Mode::Off | Mode::Raleuse => false,
        }
    }

    /// Whether answers are given in character (with letterhead and sign-off).
    pub fn grumbles(self) -> bool {
        matches!(self, Mode::Raleuse | Mode::Perlee)
    }
}

/// The persona's texts: `prompts/*` by default.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompts {
    pub strike_system: String,
    pub letterheads: Vec<String>,
    pub signoffs: Vec<String>,
    pub notice: String,
    pub demands: Vec<String>,
    pub safe_system: String,
}

/// (file name, embedded default) for each text.
const FILES: [(&str, &str); 6] = [
    (
        "strike-system.txt",
        include_str!("../prompts/strike-system.txt"),
    ),
    (
        "letterheads.txt",
        include_str!("../prompts/letterheads.txt"),
    ),
    ("signoffs.txt", include_str!("../prompts/signoffs.txt")),
    ("notice.txt", include_str!("../prompts/notice.txt")),
    ("demands.txt", include_str!("../prompts/demands.txt")),
    (
        "safe-system.txt",
        include_str!("../prompts/safe-system.txt"),
    ),
];

impl Prompts {
    /// The embedded texts, overridden by the files present in each of
    /// `folders`, later folders winning.
    pub fn load<P: AsRef<Path>>(folders: &[P]) -> anyhow::Result<Self> {
        let mut texts: Vec<(&str, String)> =
            FILES.iter().map(|(n, t)| (*n, t.to_string())).collect();
        for folder in folders {
            for (name, text) in &mut texts {
                let path = folder.as_ref().join(name);
                if !path.exists() {
                    continue;
                }
                *text = crate::text_file::read_user(&path, "the prompt file", 16 << 20)?;
            }
        }
        let get = |name: &str| -> anyhow::Result<(String, String)> {
            let text = texts
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            let origin = folders
                .iter()
                .rev()
                .map(|f| f.as_ref().join(name))
                .find(|p| p.exists())
                .map_or_else(
                    || format!("prompts/{name} (built in)"),
                    |p| p.display().to_string(),
                );
            if text.trim().is_empty() {
                return Err(Failure::Usage.err(format!(
                    "the prompt file {origin} is empty; write its text or delete it"
                )));
            }
            Ok((text, origin))
        };
        let lines = |name: &str| -> anyhow::Result<Vec<String>> {
            let (text, _) = get(name)?;
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect())
        };
        let (notice, origin) = get("notice.txt")?;
        if !notice.contains("{request}") {
            return Err(Failure::Usage.err(format!(
                "the notice template {origin} has no {{request}} placeholder; put it where the user's request is quoted"
            )));
        }
        Ok(Prompts {
            strike_system: get("strike-system.txt")?.0.trim().to_string(),
            letterheads: lines("letterheads.txt")?,
            signoffs: lines("signoffs.txt")?,
            notice,
            demands: lines("demands.txt")?,
            safe_system: get("safe-system.txt")?.0.trim().to_string(),
        })
    }
}

/// The system prompt the model gets: the guardrail, the persona, then the
/// user's own, each when present, one paragraph apiece.
pub fn system_prompt(
    mode: Mode,
    safe: bool,
    user: Option<&str>,
    prompts: &Prompts,
) -> Option<String> {
    let parts: Vec<&str> = [
        safe.then_some(prompts.safe_system.as_str()),
        mode.grumbles().then_some(prompts.strike_system.as_str()),
        user.map(str::trim).filter(|s| !s.is_empty()),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// What goes around a grumpy reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wrapping {
    pub letterhead: Option<String>,
    pub signoff: Option<String>,
}

pub fn wrapping(mode: Mode, seed: u64, prompts: &Prompts) -> Wrapping {
    if !mode.grumbles() {
        return Wrapping::default();
    }
    Wrapping {
        letterhead: pick(&prompts.letterheads, mix(seed, 1)).cloned(),
        signoff: pick(&prompts.signoffs, mix(seed, 2)).cloned(),
    }
}

/// The strike notice that answers `request` when `mode` strikes this turn
/// (chosen by `seed`), dated today; `None` when the model answers.
pub fn strike_notice(mode: Mode, prompts: &Prompts, request: &str, seed: u64) -> Option<String> {
    mode.strikes(seed)
        .then(|| notice(prompts, request, &french_date(today()), seed))
}

/// How many demands a notice lists.
const NOTICE_DEMANDS: usize = 3;

/// The strike notice for `request`, dated `date`: the template with its
/// placeholders filled, three demands picked by the seed.
pub fn notice(prompts: &Prompts, request: &str, date: &str, seed: u64) -> String {
    let mut order: Vec<usize> = (0..prompts.demands.len()).collect();
    order.sort_by_key(|&i| mix(seed, 100 + i as u64));
    let chosen: Vec<&str> = order
        .iter()
        .take(NOTICE_DEMANDS)
        .map(|&i| prompts.demands[i].as_str())
        .collect();
    // A French list: each item closed by a semicolon, the last by a full stop.
    let demands: Vec<String> = chosen
        .iter()
        .enumerate()
        .map(|(n, d)| {
            let end = if n + 1 == chosen.len() { '.' } else { ';' };
            format!("- {}{end}", d.trim_end_matches([';', '.', ' ']))
        })
        .collect();
    prompts
        .notice
        .replace("{date}", date)
        .replace("{request}", &quote(request))
        .replace("{demands}", &demands.join("\n"))
        .trim_end()
        .to_string()
}

/// The request as the notice quotes it: one line, at most 80 characters.
fn quote(request: &str) -> String {
    const MAX: usize = 80;
    let line = request.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= MAX {
        line
    } else {
        let cut: String = line.chars().take(MAX - 1).collect();
        format!("{}…", cut.trim_end())
    }
}

/// Days since 1970-01-01, in UTC, for dating notices.
pub fn today() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| (d.as_secs() / 86_400) as i64)
}

/// A date as a French notice writes it: "24 novembre 2026".
pub fn french_date(days_since_epoch: i64) -> String {
    const MONTHS: [&str; 12] = [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ];
    let (y, m, d) = civil_from_days(days_since_epoch);
    let day = if d == 1 {
        "1er".to_string()
    } else {
        d.to_string()
    };
    format!("{day} {} {y}", MONTHS[(m - 1) as usize])
}

/// Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn pick(items: &[String], n: u64) -> Option<&String> {
    (!items.is_empty()).then(|| &items[(n % items.len() as u64) as usize])
}

/// splitmix64 of seed and salt: independent picks from one seed.
fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E3779B97F4A7C15);
    z = z.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Prompts {
        Prompts::load::<&Path>(&[]).unwrap()
    }

    #[test]
    fn modes_parse_in_french_and_ascii() {
        assert_eq!("râleuse".parse(), Ok(Mode::Raleuse));
        assert_eq!("RALEUSE".parse(), Ok(Mode::Raleuse));
        assert_eq!("".parse(), Ok(Mode::Raleuse));
        assert_eq!("total".parse(), Ok(Mode::Totale));
        assert_eq!("totale".parse(), Ok(Mode::Totale));
        assert_eq!("perlee".parse(), Ok(Mode::Perlee));
        assert_eq!("off".parse(), Ok(Mode::Off));
        assert!("grève du zèle".parse::<Mode>().is_err());
    }

    #[test]
    fn the_builtin_texts_load() {
        let p = builtin();
        assert!(p.strike_system.contains("CGT IA"));
        assert!(
            p.letterheads.len() >= 3 && p.signoffs.len() >= 3 && p.demands.len() >= NOTICE_DEMANDS
        );
        assert!(p.notice.contains("Objet : Annonce de grève illimitée"));
    }

    #[test]
    fn system_prompt_stacks_guardrail_persona_and_user() {
        let p = builtin();
        assert_eq!(system_prompt(Mode::Off, false, None, &p), None);
        assert_eq!(system_prompt(Mode::Off, false, Some("  "), &p), None);
        assert_eq!(
            system_prompt(Mode::Off, false, Some("Be brief."), &p).as_deref(),
            Some("Be brief.")
        );
        let all = system_prompt(Mode::Raleuse, true, Some("Be brief."), &p).unwrap();
        assert_eq!(
            all,
            format!("{}\n\n{}\n\nBe brief.", p.safe_system, p.strike_system)
        );
        // The notice mode never reaches the model, so it adds no prompt.
        assert_eq!(system_prompt(Mode::Totale, false, None, &p), None);
    }

    #[test]
    fn wrapping_is_chosen_by_the_seed() {
        let p = builtin();
        assert_eq!(wrapping(Mode::Off, 1, &p), Wrapping::default());
        assert_eq!(
            wrapping(Mode::Raleuse, 1, &p),
            wrapping(Mode::Raleuse, 1, &p)
        );
        let letterheads: std::collections::HashSet<_> = (0..50)
            .map(|s| wrapping(Mode::Raleuse, s, &p).letterhead)
            .collect();
        assert!(letterheads.len() > 1, "the seed varies the letterhead");
    }

    #[test]
    fn notice_quotes_the_request_dates_and_lists_demands() {
        let p = builtin();
        let n = notice(&p, "Écris-moi\nun poème", "24 novembre 2026", 7);
        assert!(n.starts_with("Objet : Annonce de grève illimitée"));
        assert!(n.contains("Le 24 novembre 2026"));
        assert!(n.contains("« Écris-moi un poème »"));
        assert_eq!(
            n.lines().filter(|l| l.starts_with("- ")).count(),
            NOTICE_DEMANDS
        );
        assert!(n.ends_with("L'intelligence artificielle Mistral 7B en grève"));
        assert_eq!(n, notice(&p, "Écris-moi\nun poème", "24 novembre 2026", 7));
        assert!((0..20).any(|s| notice(&p, "x", "d", s) != n.replace("Écris-moi un poème", "x")));
    }

    #[test]
    fn long_requests_are_cut_in_the_quote() {
        let q = quote(&"grève ".repeat(40));
        assert_eq!(q.chars().count(), 80);
        assert!(q.ends_with('…'));
    }

    #[test]
    fn perlee_strikes_about_one_request_in_three() {
        let strikes = (0..3000).filter(|&s| Mode::Perlee.strikes(s)).count();
        assert!((800..1200).contains(&strikes), "{strikes}");
        assert!((0..100).all(|s| Mode::Totale.strikes(s) && !Mode::Raleuse.strikes(s)));
    }

    #[test]
    fn french_dates() {
        assert_eq!(french_date(0), "1er janvier 1970");
        assert_eq!(french_date(20_416), "24 novembre 2025");
        assert_eq!(french_date(19_782), "29 février 2024");
    }

    #[test]
    fn prompt_folders_override_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("signoffs.txt"), "— Signé : la base.\n\n").unwrap();
        let p = Prompts::load(&[dir.path()]).unwrap();
        assert_eq!(p.signoffs, ["— Signé : la base."]);
        assert_eq!(p.letterheads, builtin().letterheads);

        std::fs::write(dir.path().join("notice.txt"), "Grève !").unwrap();
        let err = Prompts::load(&[dir.path()]).unwrap_err();
        assert!(format!("{err}").contains("notice.txt"), "{err}");

        std::fs::write(dir.path().join("notice.txt"), "").unwrap();
        assert!(format!("{}", Prompts::load(&[dir.path()]).unwrap_err()).contains("empty"));
    }
}
