import os

os.environ.setdefault(
    "DJANGO_SETTINGS_MODULE", "tests.integration.webapps.djangosettings"
)

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
