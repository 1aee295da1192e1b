from django.db import models


class Order(models.Model):
    name = models.CharField(max_length=50)
    placed = models.DateTimeField(null=True)
    data = models.JSONField(default=dict)
