"""The Kivy tablet app. Import :mod:`edge_app.app.main` only where Kivy is wanted (it starts Kivy)."""
