//! Console field formatting: like `tracing-subscriber`'s default, minus the `otel.*` fields
//! (span name, kind and status meant for the exporter, noise on a terminal).

use std::fmt;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

pub(crate) struct ConsoleFields;

impl<'w> FormatFields<'w> for ConsoleFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer: &mut writer,
            wrote: false,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    wrote: bool,
    result: fmt::Result,
}

impl Visitor<'_, '_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err()
            || field.name().starts_with("otel.")
            || field.name().starts_with("log.")
        {
            return;
        }
        let sep = if self.wrote { " " } else { "" };
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{value}")
        } else if self.writer.has_ansi_escapes() {
            write!(self.writer, "{sep}\x1b[3m{}\x1b[0m={value}", field.name())
        } else {
            write!(self.writer, "{sep}{}={value}", field.name())
        };
        self.wrote = true;
    }
}

impl Visit for Visitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}
