"""Routes of the TorchServe and KServe v2 compatibility endpoints (at the server root, as those clients expect)."""

from django.urls import path

from api.compat import kserve, torchserve

urlpatterns = [
    path("ping", torchserve.PingApi.as_view(), name="torchserve-ping"),
    path("predictions/<str:model>", torchserve.PredictionsApi.as_view(), name="torchserve-predict"),
    path("predictions/<str:model>/<str:version>", torchserve.PredictionsVersionApi.as_view(),
         name="torchserve-predict-version"),
    path("v2", kserve.ServerMetadataApi.as_view(), name="v2-server"),
    path("v2/health/live", kserve.ServerLiveApi.as_view(), name="v2-live"),
    path("v2/health/ready", kserve.ServerReadyApi.as_view(), name="v2-ready"),
    path("v2/models/<str:model>", kserve.ModelMetadataApi.as_view(), name="v2-model"),
    path("v2/models/<str:model>/ready", kserve.ModelReadyApi.as_view(), name="v2-model-ready"),
    path("v2/models/<str:model>/infer", kserve.ModelInferApi.as_view(), name="v2-model-infer"),
    path("v2/models/<str:model>/versions/<str:version>", kserve.ModelVersionMetadataApi.as_view(),
         name="v2-model-version"),
    path("v2/models/<str:model>/versions/<str:version>/ready", kserve.ModelVersionReadyApi.as_view(),
         name="v2-model-version-ready"),
    path("v2/models/<str:model>/versions/<str:version>/infer", kserve.ModelVersionInferApi.as_view(),
         name="v2-model-version-infer"),
]
