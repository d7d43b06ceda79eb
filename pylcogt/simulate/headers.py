"""Header cards for simulated raw frames, named and commented like real LCO headers.

Cards are plain ``(keyword, value, comment)`` tuples: only ``pylcogt.io`` turns them into FITS.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pylcogt.simulate.cameras import CameraSpec, Layout, Site
from pylcogt.simulate.geometry import SinistroGeometry
from pylcogt.simulate.sky import alt_airmass, format_dec, format_ra, lst_hours, mjd

__all__ = ["Card", "FrameInfo", "frame_cards", "sinistro_amp_cards"]

Card = tuple[str, object, str]


@dataclass(frozen=True)
class FrameInfo:
    """What the header of one frame needs to know (times UTC, angles degrees)."""

    obstype: str
    filter: str
    exptime: float
    start: dt.datetime
    dayobs: str
    framenum: int
    filename: str
    ra: float
    dec: float
    object: str
    molnum: int
    molfrnum: int
    frmtotal: int
    ccd_temp_actual: float


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _hms(t: dt.datetime) -> str:
    return t.strftime("%H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def frame_cards(
    spec: CameraSpec,
    layout: Layout,
    site: Site,
    info: FrameInfo,
    *,
    crpix: tuple[float, float],
) -> list[Card]:
    """Cards of the primary header (Sinistro) or the only image header (SBIG, Spectral)."""
    binned = f"{spec.binning} {spec.binning}"
    size = layout.n * spec.binning
    stop = info.start + dt.timedelta(seconds=info.exptime)
    lst = lst_hours(info.start, site.lon)
    alt, airmass = alt_airmass(info.ra, info.dec, site.lat, lst)
    lst_str = format_ra(lst * 15.0)[:-1]
    gx, gy, gz = site.obsgeo()
    is_cal = info.obstype in ("BIAS", "DARK")
    light = info.obstype in ("SKYFLAT", "EXPOSE")
    scale = spec.pixscale / 3600.0
    wheel = info.filter
    gain: object = 0.0 if spec.n_amps > 1 else spec.gain[0]
    cards: list[Card] = [
        ("DATADICV", "LCOGT-DIC.FITS-0.10.0", "Version number of the data dictionary"),
        ("HDRVER", "LCOGT-HDR-1.3.0", "Version number of the headers"),
        ("ORIGIN", "LCOGT", "Organization responsible for the data"),
        ("SITEID", site.code, "ID code of the Observatory site"),
        ("SITE", site.name, "Site of the Observatory"),
        ("ENCID", spec.encid, "ID code of the Enclosure"),
        ("ENCLOSUR", f"Dome-{spec.telnum}", "Building containing Telescope"),
        ("TELID", spec.telid, "ID code of the Telescope"),
        ("TELESCOP", spec.telescop, "The Name of the Telescope"),
        ("LATITUDE", site.lat, "[deg North] Telescope Latitude"),
        ("LONGITUD", site.lon, "[deg East] Telescope Longitude"),
        ("HEIGHT", site.height, "[m] Altitude of Telescope above sea level"),
        ("OBSGEO-X", round(gx, 3), "[m] Cartesian X co-ord of telescope (WGS84)"),
        ("OBSGEO-Y", round(gy, 3), "[m] Cartesian Y co-ord of telescope (WGS84)"),
        ("OBSGEO-Z", round(gz, 3), "[m] Cartesian Z co-ord of telescope (WGS84)"),
        ("OBSTYPE", info.obstype, "Observation type"),
        ("FRAMENUM", info.framenum, "Running frame number"),
        ("MOLTYPE", info.obstype, "Molecule type"),
        ("MOLNUM", info.molnum, "Molecule number"),
        ("MOLFRNUM", info.molfrnum, "Exposure number within molecule"),
        ("FRMTOTAL", info.frmtotal, "Total number of exposures within molecule"),
        ("ORIGNAME", info.filename, "Fname written by ICS"),
        ("OBSTELEM", "N/A", "Link to observation telemetry"),
        ("TIMESYS", "UTC", "Time system used"),
        ("DATE", info.start.strftime("%Y-%m-%d"), "[UTC] Date this FITS file was written"),
        ("DATE-OBS", _iso(info.start), "[UTC] Start date and time of the observation"),
        ("DAY-OBS", info.dayobs, "[UTC] Date at start of local observing night"),
        ("UTSTART", _hms(info.start), "[UTC] The start time of the observation"),
        ("UTSTOP", _hms(stop), "[UTC] The finish time of the observation"),
        ("MJD-OBS", round(mjd(info.start), 7), "[UTC days] Start date/time (Modified Julian Date)"),
        ("EXPTIME", info.exptime, "[s] Exposure length"),
        ("REQTIME", info.exptime, "[s] Requested exposure length"),
        ("FILTER1", "air", "The first filter wheel filter type"),
        ("FILTERI1", "Air", "The first filter wheel filter id"),
        ("FILTER2", wheel, "The second filter wheel filter type"),
        (
            "FILTERI2",
            "Air" if wheel == "air" else f"SIM-{wheel.upper()}-001",
            "The second filter wheel filter id",
        ),
        ("FILTER3", "air", "The third filter wheel filter type"),
        ("FILTERI3", "Air", "The third filter wheel filter id"),
        ("FILTER", info.filter, "Filter used"),
        ("FWID", f"fws{spec.telclass}-01", "Filter Wheel ID"),
        ("INSTRUME", spec.instrument, "Instrument used"),
        ("INSTYPE", spec.instype, "Type of instrument"),
        ("INSSTATE", "OKAY", "The instrument status"),
        ("ICSVER", "pylcogt-simulate", "Version number of the ICS software"),
        ("CONFMODE", spec.confmode, "Camera mode configuration"),
        ("CONFNAME", "N/A", "The instrument configuration used"),
        ("DETECTOR", spec.detector, "Detector type"),
        ("DETECTID", spec.detector, "Detector serial number"),
        ("GAIN", gain, "[electrons/count] Pixel gain"),
        ("RDNOISE", spec.read_noise, "[electrons/pixel] Read noise"),
        ("DARKCURR", 0.0, "[electrons/pixel/s @ 200K] Dark current"),
        ("SATURATE", spec.saturate, "[ADU] Saturation level"),
        ("MAXLIN", spec.saturate, "[ADU] Non-linearity level"),
        ("RDSPEED", 60.0, "[kpix/s] Readout speed used"),
        ("DETSIZE", f"[1:{size},1:{size}]", "[pixel] Detector size"),
        ("AMPNAME", "default", "Amplifier name"),
        ("CCDSEC", f"[1:{size},1:{size}]", "[pixel] Region of CCD read"),
        ("CCDSUM", binned, "CCD on-chip summing/binning"),
        ("BIASSEC", layout.biassec, "[binned pixel] Section of bias/overscan data"),
        ("DATASEC", layout.datasec, "[binned pixel] Data section"),
        ("TRIMSEC", layout.trimsec, "[binned pixel] Section of useful data"),
        ("ROI", "UNKNOWN", "[binned pixel] Region of interest or MULTIPLE"),
        ("DETSEC", "UNKNOWN", "[binned pixel] Section of useful data"),
        ("CCDXPIXE", round(spec.pixel_um * 1e-6, 9), "[m] Size of pixels, in X"),
        ("CCDYPIXE", round(spec.pixel_um * 1e-6, 9), "[m] Size of pixels, in Y"),
        ("PIXSCALE", spec.pixscale, "[arcsec/pixel] Nominal pixel scale on sky"),
        ("CCDSTEMP", spec.ccd_temp, "[deg C] CCD required temperature"),
        ("CCDATEMP", info.ccd_temp_actual, "[deg C] CCD actual temperature"),
        ("CCDSESIG", "N/A", "[mK] CCD temp control servo error signal"),
        ("TELMODE", "AUTOMATIC", "Telescope mode"),
        ("TAGID", "LCOGT", "Time Allocation Group ID"),
        ("USERID", "pylcogt-sim", "User ID"),
        ("PROPID", "calibrate" if info.obstype != "EXPOSE" else "SIM2026B-001", "Proposal ID"),
        ("GROUPID", info.object, "Group ID"),
        ("OBSID", "UNSPECIFIED", "Observation ID"),
        ("SCHEDNAM", "POND", "Name of scheduler in control"),
        ("RA", format_ra(info.ra), "[HH:MM:SS.sss] RA where telescope is pointing"),
        ("DEC", format_dec(info.dec), "[sDD:MM:SS.ss] Dec where telescope is pointing"),
        ("RADESYS", "ICRS", "[[FK5,ICRS]] Fundamental coord. system of the object"),
        ("LST", lst_str, "[HH:MM:SS.ss] LST at start of current observation"),
        (
            "CAT-RA",
            format_ra(info.ra) if light else "NaN",
            "[HH:MM:SS.sss] Catalog RA of the object",
        ),
        (
            "CAT-DEC",
            format_dec(info.dec) if light else "NaN",
            "[sDD:MM:SS.ss] Catalog Dec of the object",
        ),
        ("CAT-EPOC", 2000.0, "[Year] Catalog epoch of the coordinates"),
        ("OBJECT", info.object, "Object name"),
        ("SRCTYPE", "FIELD" if info.obstype == "EXPOSE" else "N/A", "Source type"),
        ("TELSTATE", "OKAY", "Current telescope status"),
        ("ALTITUDE", round(alt, 7), "[deg] Altitude axis position"),
        ("AIRMASS", round(airmass, 7), "Effective mean airmass"),
        ("ENC1STAT", "CLOSED" if is_cal else "OPEN", "Enclosure shutter 1 state"),
        ("ENC2STAT", "CLOSED" if is_cal else "OPEN", "Enclosure shutter 2 state"),
        ("M1COVER", "DEPLOYED" if is_cal else "STOWED", "M1 mirror cover state"),
        ("CTYPE1", "RA---TAN", "Type of WCS Projection"),
        ("CTYPE2", "DEC--TAN", "Type of WCS Projection"),
        ("CRPIX1", crpix[0], "[pixel] Coordinate of reference point (axis 1)"),
        ("CRPIX2", crpix[1], "[pixel] Coordinate of reference point (axis 2)"),
        ("CRVAL1", info.ra, "[deg] RA at the reference pixel"),
        ("CRVAL2", info.dec, "[deg] Dec at the reference pixel"),
        ("CUNIT1", "deg", "Units of RA"),
        ("CUNIT2", "deg", "Units of Dec"),
        ("CD1_1", -scale, "WCS CD transformation matrix"),
        ("CD1_2", 0.0, "WCS CD transformation matrix"),
        ("CD2_1", 0.0, "WCS CD transformation matrix"),
        ("CD2_2", scale, "WCS CD transformation matrix"),
    ]
    if spec.crosstalk is not None:
        cards += [
            ("CLKMODE", 1, "Sinistro Readout Mode"),
            ("AMPMASK", 15, "Sinistro Active Amplifier Mask"),
        ]
        for i in range(spec.n_amps):
            for j in range(spec.n_amps):
                if i != j:
                    cards.append(
                        (
                            f"CRSTLK{i + 1}{j + 1}",
                            spec.crosstalk[i][j],
                            f"[Crosstalk coefficient] Signal from Q{i + 1} onto Q{j + 1}",
                        )
                    )
    return cards


def sinistro_amp_cards(spec: CameraSpec, geometry: SinistroGeometry) -> list[list[Card]]:
    """Cards of the four ``SCI`` extensions (amplifier order 1-4)."""
    out = []
    for amp in geometry.amps:
        out.append(
            [
                ("CCDSUM", "1 1", "CCD on-chip summing/binning"),
                ("DETSEC", amp.detsec_str, "Detector section"),
                ("BIASSEC", amp.biassec_str, "Section of overscan data"),
                ("DATASEC", amp.datasec_str, "Data section"),
                ("GAIN", spec.gain[amp.amp - 1], "Pixel gain"),
                ("EXTVER", amp.amp, "Extension instance"),
                ("EXTNAME", "SCI", "Extension name"),
            ]
        )
    return out
