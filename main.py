"""APK entry point (python-for-android runs main.py from the app folder): start the partlens app."""
from edge_app.app.main import device_main

if __name__ == "__main__":
    device_main()
