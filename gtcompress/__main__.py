from .cli import app

if __name__ == "__main__":  # loader workers import this module from a forkserver: it must not run the app again
    app(prog_name="gtcompress")
