"""The built wheel carries names.txt, so an installed (non-editable) package works from any directory."""
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_ships_the_data_and_works_elsewhere(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", tmp_path / "dist", ROOT], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("nplm-*.whl"))
    assert "nplm/assets/names.txt" in zipfile.ZipFile(wheel).namelist()

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import nplm.data as d; w = d.load_words(); print(len(w), d.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(site), "PATH": ""}).stdout
    count, location = out.split()
    assert count == "32033" and location.startswith(str(site))
