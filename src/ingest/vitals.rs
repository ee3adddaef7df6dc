//! The vital signs Braid ingests: their LOINC codes, profiles and UCUM units, the units each
//! may arrive in, and the values a person can have.
//!
//! Every reading is converted to one canonical unit per kind (the first the R4 vital-signs
//! profile allows for its code), so that the same measurement always yields the same
//! Observation whatever the device's locale was.

use std::fmt;

/// A kind of vital sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    HeartRate,
    /// The lowest heart rate of a day at rest, as wearables report it.
    RestingHeartRate,
    RespiratoryRate,
    OxygenSaturation,
    BloodPressure,
    BodyTemperature,
    BodyWeight,
    BodyHeight,
    BodyMassIndex,
}

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";

/// A LOINC code with its display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub display: &'static str,
}

/// A unit as Observations carry it: the UCUM code and the human-readable form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub ucum: &'static str,
    pub human: &'static str,
}

const PER_MINUTE_BEATS: Unit = Unit { ucum: "/min", human: "beats/minute" };
const PER_MINUTE_BREATHS: Unit = Unit { ucum: "/min", human: "breaths/minute" };
const PERCENT: Unit = Unit { ucum: "%", human: "%" };
const MM_HG: Unit = Unit { ucum: "mm[Hg]", human: "mmHg" };
const CELSIUS: Unit = Unit { ucum: "Cel", human: "C" };
const KILOGRAM: Unit = Unit { ucum: "kg", human: "kg" };
const CENTIMETRE: Unit = Unit { ucum: "cm", human: "cm" };
const KG_PER_M2: Unit = Unit { ucum: "kg/m2", human: "kg/m2" };

pub const SYSTOLIC: Code = Code { code: "8480-6", display: "Systolic blood pressure" };
pub const DIASTOLIC: Code = Code { code: "8462-4", display: "Diastolic blood pressure" };

/// What Braid knows about a kind: how it is coded and what values are possible.
#[derive(Debug, Clone, Copy)]
pub struct Definition {
    /// The codes of `Observation.code`: the one the profile requires first.
    pub codes: &'static [Code],
    /// The R4 profile for the kind (besides the base vital-signs profile).
    pub profile: &'static str,
    pub unit: Unit,
    /// The possible values, in the canonical unit.
    pub range: (f64, f64),
    /// Decimals kept in the canonical unit: a reading converted from another unit is rounded
    /// to this, so that rounding noise does not make two Observations of one measurement.
    pub decimals: i32,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::HeartRate,
        Kind::RestingHeartRate,
        Kind::RespiratoryRate,
        Kind::OxygenSaturation,
        Kind::BloodPressure,
        Kind::BodyTemperature,
        Kind::BodyWeight,
        Kind::BodyHeight,
        Kind::BodyMassIndex,
    ];

    pub fn definition(self) -> Definition {
        const HEART_RATE: Code = Code { code: "8867-4", display: "Heart rate" };
        match self {
            Kind::HeartRate => Definition {
                codes: &[HEART_RATE],
                profile: "http://hl7.org/fhir/StructureDefinition/heartrate",
                unit: PER_MINUTE_BEATS,
                range: (20.0, 250.0),
                decimals: 1,
            },
            Kind::RestingHeartRate => Definition {
                codes: &[HEART_RATE, Code { code: "40443-4", display: "Heart rate --resting" }],
                profile: "http://hl7.org/fhir/StructureDefinition/heartrate",
                unit: PER_MINUTE_BEATS,
                range: (20.0, 200.0),
                decimals: 1,
            },
            Kind::RespiratoryRate => Definition {
                codes: &[Code { code: "9279-1", display: "Respiratory rate" }],
                profile: "http://hl7.org/fhir/StructureDefinition/resprate",
                unit: PER_MINUTE_BREATHS,
                range: (2.0, 80.0),
                decimals: 1,
            },
            Kind::OxygenSaturation => Definition {
                codes: &[
                    Code { code: "2708-6", display: "Oxygen saturation in Arterial blood" },
                    Code { code: "59408-5", display: "Oxygen saturation in Arterial blood by Pulse oximetry" },
                ],
                profile: "http://hl7.org/fhir/StructureDefinition/oxygensat",
                unit: PERCENT,
                range: (50.0, 100.0),
                decimals: 1,
            },
            Kind::BloodPressure => Definition {
                codes: &[Code { code: "85354-9", display: "Blood pressure panel with all children optional" }],
                profile: "http://hl7.org/fhir/StructureDefinition/bp",
                unit: MM_HG,
                // Either pressure; `check_pressure` checks the pair.
                range: (15.0, 300.0),
                decimals: 0,
            },
            Kind::BodyTemperature => Definition {
                codes: &[Code { code: "8310-5", display: "Body temperature" }],
                profile: "http://hl7.org/fhir/StructureDefinition/bodytemp",
                unit: CELSIUS,
                range: (25.0, 45.0),
                decimals: 2,
            },
            Kind::BodyWeight => Definition {
                codes: &[Code { code: "29463-7", display: "Body weight" }],
                profile: "http://hl7.org/fhir/StructureDefinition/bodyweight",
                unit: KILOGRAM,
                range: (0.3, 650.0),
                decimals: 2,
            },
            Kind::BodyHeight => Definition {
                codes: &[Code { code: "8302-2", display: "Body height" }],
                profile: "http://hl7.org/fhir/StructureDefinition/bodyheight",
                unit: CENTIMETRE,
                range: (20.0, 280.0),
                decimals: 1,
            },
            Kind::BodyMassIndex => Definition {
                codes: &[Code { code: "39156-5", display: "Body mass index (BMI) [Ratio]" }],
                profile: "http://hl7.org/fhir/StructureDefinition/bmi",
                unit: KG_PER_M2,
                range: (7.0, 150.0),
                decimals: 1,
            },
        }
    }

    /// A short name, used in ids, reports and the `kind` of a dry run.
    pub fn name(self) -> &'static str {
        match self {
            Kind::HeartRate => "heart-rate",
            Kind::RestingHeartRate => "resting-heart-rate",
            Kind::RespiratoryRate => "respiratory-rate",
            Kind::OxygenSaturation => "oxygen-saturation",
            Kind::BloodPressure => "blood-pressure",
            Kind::BodyTemperature => "body-temperature",
            Kind::BodyWeight => "body-weight",
            Kind::BodyHeight => "body-height",
            Kind::BodyMassIndex => "body-mass-index",
        }
    }

    /// Converts `value` in `unit` (as a device or export spells it) to the kind's canonical
    /// unit, rounded to its decimals. Refuses a unit that does not measure the kind and a
    /// value no person can have.
    pub fn canonical(self, value: f64, unit: &str) -> Result<f64, Problem> {
        if !value.is_finite() {
            return Err(Problem::new(format!("{} value {value} is not a number", self.name())));
        }
        let converted = self.convert(value, unit.trim())?;
        let definition = self.definition();
        let scale = 10f64.powi(definition.decimals);
        let rounded = (converted * scale).round() / scale;
        let (low, high) = definition.range;
        if !(low..=high).contains(&rounded) {
            return Err(Problem::new(format!(
                "{} of {} {} is impossible (expected {low} to {high} {})",
                self.name(),
                trim_number(rounded),
                definition.unit.human,
                definition.unit.human
            )));
        }
        Ok(rounded)
    }

    fn convert(self, value: f64, unit: &str) -> Result<f64, Problem> {
        let lower = unit.to_ascii_lowercase();
        let unit_name = lower.as_str();
        let factor_and_offset: Option<(f64, f64)> = match self {
            Kind::HeartRate | Kind::RestingHeartRate | Kind::RespiratoryRate => match unit_name {
                "/min" | "count/min" | "beats/min" | "bpm" | "beats/minute" | "breaths/min" | "breaths/minute"
                | "{beats}/min" | "{breaths}/min" | "min-1" | "1/min" => Some((1.0, 0.0)),
                "count/s" | "/s" | "hz" => Some((60.0, 0.0)),
                _ => None,
            },
            Kind::OxygenSaturation => match unit_name {
                "%" | "percent" => Some((1.0, 0.0)),
                // A fraction of one, as Apple Health and some APIs store it.
                "1" | "fraction" | "{fraction}" | "ratio" => Some((100.0, 0.0)),
                _ => None,
            },
            Kind::BloodPressure => match unit_name {
                "mmhg" | "mm[hg]" | "mm hg" => Some((1.0, 0.0)),
                "kpa" => Some((7.500_615_75, 0.0)),
                "cmh2o" | "cm[h2o]" => Some((0.735_559_1, 0.0)),
                _ => None,
            },
            Kind::BodyTemperature => match unit_name {
                "cel" | "c" | "degc" | "°c" | "celsius" => Some((1.0, 0.0)),
                "[degf]" | "f" | "degf" | "°f" | "fahrenheit" => Some((5.0 / 9.0, -32.0 * 5.0 / 9.0)),
                "k" | "kelvin" => Some((1.0, -273.15)),
                _ => None,
            },
            Kind::BodyWeight => match unit_name {
                "kg" | "kilogram" | "kilograms" => Some((1.0, 0.0)),
                "g" | "gram" | "grams" => Some((0.001, 0.0)),
                "lb" | "lbs" | "[lb_av]" | "pound" | "pounds" => Some((0.453_592_37, 0.0)),
                "st" | "stone" | "[stone_av]" => Some((6.350_293_18, 0.0)),
                "oz" | "[oz_av]" => Some((0.028_349_523_125, 0.0)),
                _ => None,
            },
            Kind::BodyHeight => match unit_name {
                "cm" | "centimetre" | "centimeter" => Some((1.0, 0.0)),
                "m" | "metre" | "meter" => Some((100.0, 0.0)),
                "mm" => Some((0.1, 0.0)),
                "in" | "[in_i]" | "inch" | "inches" => Some((2.54, 0.0)),
                "ft" | "[ft_i]" | "foot" | "feet" => Some((30.48, 0.0)),
                _ => None,
            },
            Kind::BodyMassIndex => match unit_name {
                "kg/m2" | "kg/m^2" | "kg/m²" | "count" | "" | "1" => Some((1.0, 0.0)),
                _ => None,
            },
        };
        match factor_and_offset {
            Some((factor, offset)) => Ok(value * factor + offset),
            None => Err(Problem::new(format!(
                "'{unit}' is not a unit of {} (expected e.g. {})",
                self.name(),
                self.definition().unit.human
            ))),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a record was not turned into an Observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    /// Not a fault of the record: it holds something Braid does not ingest (steps, workouts),
    /// and `reason` names what.
    pub skipped: bool,
}

impl Problem {
    pub fn new(reason: impl Into<String>) -> Problem {
        Problem { reason: reason.into(), skipped: false }
    }

    /// A record of a kind Braid does not ingest, named by `what`.
    pub fn skip(what: impl Into<String>) -> Problem {
        Problem { reason: what.into(), skipped: true }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A number as people write it: `72`, not `72.0`.
pub fn trim_number(value: f64) -> String {
    let text = format!("{value}");
    text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
}

/// Checks a blood pressure in mmHg: both within what a person can have, systolic above
/// diastolic.
pub fn check_pressure(systolic: f64, diastolic: f64) -> Result<(), Problem> {
    if !(40.0..=300.0).contains(&systolic) {
        return Err(Problem::new(format!("systolic pressure of {} mmHg is impossible", trim_number(systolic))));
    }
    if !(15.0..=200.0).contains(&diastolic) {
        return Err(Problem::new(format!("diastolic pressure of {} mmHg is impossible", trim_number(diastolic))));
    }
    if diastolic >= systolic {
        return Err(Problem::new(format!(
            "diastolic pressure ({} mmHg) must be below systolic ({} mmHg)",
            trim_number(diastolic),
            trim_number(systolic)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_convert_to_one_unit_per_kind_whatever_the_locale() {
        assert_eq!(Kind::BodyWeight.canonical(154.0, "lb").unwrap(), 69.85);
        assert_eq!(Kind::BodyWeight.canonical(11.0, "st").unwrap(), 69.85);
        assert_eq!(Kind::BodyWeight.canonical(69_850.0, "g").unwrap(), 69.85);
        assert_eq!(Kind::BodyTemperature.canonical(98.6, "degF").unwrap(), 37.0);
        assert_eq!(Kind::BodyTemperature.canonical(310.15, "K").unwrap(), 37.0);
        assert_eq!(Kind::BodyHeight.canonical(5.75, "ft").unwrap(), 175.3);
        assert_eq!(Kind::BodyHeight.canonical(1.753, "m").unwrap(), 175.3);
        assert_eq!(Kind::OxygenSaturation.canonical(0.97, "1").unwrap(), 97.0);
        assert_eq!(Kind::HeartRate.canonical(72.0, "count/min").unwrap(), 72.0);
        assert_eq!(Kind::HeartRate.canonical(1.2, "Hz").unwrap(), 72.0);
        assert_eq!(Kind::BloodPressure.canonical(16.0, "kPa").unwrap(), 120.0);
    }

    #[test]
    fn impossible_values_and_foreign_units_are_refused_with_the_reason() {
        let problem = Kind::HeartRate.canonical(900.0, "bpm").unwrap_err();
        assert_eq!(problem.reason, "heart-rate of 900 beats/minute is impossible (expected 20 to 250 beats/minute)");
        let problem = Kind::BodyWeight.canonical(70.0, "mmHg").unwrap_err();
        assert_eq!(problem.reason, "'mmHg' is not a unit of body-weight (expected e.g. kg)");
        assert!(Kind::OxygenSaturation.canonical(97.0, "1").is_err(), "a fraction of 97 is 9700%");
        assert!(Kind::BodyTemperature.canonical(f64::NAN, "Cel").is_err());
        assert!(check_pressure(80.0, 120.0).unwrap_err().reason.contains("below systolic"));
        assert!(check_pressure(120.0, 80.0).is_ok());
    }
}
