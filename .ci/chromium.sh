# Sourced by .ci/run (set -euo pipefail, as root, Debian 12): Debian's Chromium and
# ChromeDriver for the browser tests (tests/browser.py). Idempotent: installs only
# when missing. Selenium is pointed at /usr/bin/chromedriver, so nothing is downloaded.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y chromium chromium-driver
fi
