//! Plugin logging: to the file named by `KNIT_LOG_FILE` (appending) or to stderr, never stdout.
//!
//! Without `KNIT_LOG` (the normal case: a plugin process per pod per ADD/DEL) a [`LineLogger`]
//! writes events at `info` and above to a file, `warn` and above to stderr, one line each. It
//! keeps no span state: tracing-subscriber's fmt layer allocates its span registry (sharded
//! slabs) when it starts, which cost a measurable part of a plugin's ~1 ms life. With
//! `KNIT_LOG` set (debugging, the phase spans of `knit bench`), the full fmt subscriber with an
//! EnvFilter runs instead.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Subscriber;
use tracing::{Event, Level, Metadata};

/// Sets up `tracing` once for a plugin process (see the module doc).
pub fn init() {
    let file = std::env::var_os("KNIT_LOG_FILE")
        .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    if std::env::var_os("KNIT_LOG").is_none() {
        let logger = match file {
            Some(f) => LineLogger::new(Level::INFO, Box::new(f)),
            None => LineLogger::new(Level::WARN, Box::new(std::io::stderr())),
        };
        let _ = tracing::subscriber::set_global_default(logger);
        return;
    }
    use tracing_subscriber::EnvFilter;
    let default = if file.is_some() { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("KNIT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    let _ = match file {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Events at or above a level, one line each (`<UTC time> <LEVEL> <target>: <message> k=v`,
/// as tracing-subscriber's fmt prints them); spans are accepted and ignored.
pub struct LineLogger {
    max: Level,
    out: Mutex<Box<dyn Write + Send>>,
}

impl LineLogger {
    /// A logger of events at `max` and more severe, to `out`.
    pub fn new(max: Level, out: Box<dyn Write + Send>) -> LineLogger {
        LineLogger { max, out: Mutex::new(out) }
    }
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // tracing orders levels by verbosity: ERROR < WARN < ... < TRACE.
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.max))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let m = event.metadata();
        let mut line = String::with_capacity(128);
        let _ = write!(line, "{} {:>5} {}:", utc_now(), m.level(), m.target());
        event.record(&mut Fields(&mut line));
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// The time as RFC 3339 UTC with microseconds (`2026-11-23T13:29:18.182858Z`).
fn utc_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_micros())
}

fn rfc3339(secs: i64, micros: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (the proleptic Gregorian calendar, by eras of
    // 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(rfc3339(1_795_437_758, 182_858), "2026-11-23T12:42:38.182858Z");
        assert_eq!(rfc3339(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_hold_level_target_message_and_fields() {
        let buf = Buf::default();
        let logger = LineLogger::new(Level::INFO, Box::new(buf.clone()));
        tracing::subscriber::with_default(logger, || {
            tracing::debug!("hidden");
            tracing::info!(pod = "p1", n = 3, "allocated {}", "10.0.0.2");
            tracing::warn!("rollback: {}", "no veth");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with(" INFO knit_cni::log::tests: allocated 10.0.0.2 pod=\"p1\" n=3"), "{text}");
        assert!(lines[1].ends_with(" WARN knit_cni::log::tests: rollback: no veth"), "{text}");
        assert!(lines[0].starts_with("20") && lines[0].as_bytes()[26] == b'Z', "{text}");
    }
}
